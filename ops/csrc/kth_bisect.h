// The k-th largest of integer-valued floats by bisection on the value: shared by every SIMD tier's
// kth_largest_int, each passing its own vectorised count. A template instantiated per caller's lambda, so no
// function compiled with one tier's target flags is ever shared with another (no ODR merging across tiers).
#pragma once
#include <cstdint>

namespace iceformer {

// Largest integer m in [lo, hi] with count_ge(m) >= k, given count_ge(lo) >= k; count_ge(t) = how many elements are
// >= t. Over integer-valued elements m is then the k-th largest value itself.
template <class CountGe>
inline int32_t bisect_int(CountGe count_ge, int64_t k, int32_t lo, int32_t hi) {
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo + 1) / 2;
    if (count_ge(mid) >= k)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

}  // namespace iceformer
