// Top-k by score: a min-heap of capacity k whose root is the admission threshold.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <cstdint>
#include <utility>
#include <vector>

#include "float_order.h"
#include "simd.h"

namespace iceformer {

class TopK {
 public:
  void reset(int64_t k) {
    k_ = k;
    heap_.clear();
    if (static_cast<int64_t>(heap_.capacity()) < k) heap_.reserve(k);
  }
  // Score a key must beat to enter (-inf until full).
  float threshold() const { return full() ? heap_.front().first : -std::numeric_limits<float>::infinity(); }
  bool full() const { return static_cast<int64_t>(heap_.size()) >= k_; }
  void push(float score, int32_t id) {
    if (k_ <= 0) return;
    if (!full()) {
      heap_.emplace_back(score, id);
      std::push_heap(heap_.begin(), heap_.end(), cmp);
    } else if (score > heap_.front().first) {
      std::pop_heap(heap_.begin(), heap_.end(), cmp);
      heap_.back() = {score, id};
      std::push_heap(heap_.begin(), heap_.end(), cmp);
    }
  }
  const std::vector<std::pair<float, int32_t>>& items() const { return heap_; }  // heap order

  // The k-th largest of v[0, n) (0 < k <= n, no NaN): a bisection over the order-preserving integer image
  // of floats, each step one vectorised count (32 steps at most, no data-dependent branches per element).
  static float kth_largest(const float* v, int64_t n, int64_t k, const Kernels& kern) {
    const auto key = ordered_key;
    const auto val = ordered_float;
    // Largest K with count(v >= val(K)) >= k: lo always satisfies it, hi + 1 never does.
    uint32_t lo = key(-std::numeric_limits<float>::infinity()), hi = key(kern.max(v, n));
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      const int64_t c = kern.count_ge(v, n, val(mid));
      if (c == k) {  // the k largest are exactly those >= val(mid): the k-th is their least
        const float x = val(mid);
        float least = std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < n; ++i) least = std::min(least, v[i] >= x ? v[i] : least);
        return least;
      }
      if (c > k)
        lo = mid;
      else
        hi = mid - 1;
    }
    return val(lo);
  }

  // Keeps the k largest of vals[0, n) (with their ids), in input order, ties at the k-th value by position
  // (NaN counts as largest). `tmp` is scratch.
  static int64_t keep_largest(float* vals, int32_t* ids, int64_t n, int64_t k, const Kernels& kern) {
    if (n <= k) return n;
    if (k <= 0) return 0;
    for (int64_t t = 0; t < n; ++t)
      if (std::isnan(vals[t])) vals[t] = std::numeric_limits<float>::infinity();  // NaN ranks first
    const float kth = kth_largest(vals, n, k, kern);
    int64_t above = 0;
    for (int64_t t = 0; t < n; ++t) above += (vals[t] > kth || std::isnan(vals[t])) ? 1 : 0;
    int64_t ties = k - above, m = 0;
    for (int64_t t = 0; t < n; ++t) {
      const bool keep = vals[t] > kth || std::isnan(vals[t]) || (vals[t] == kth && ties-- > 0);
      if (keep) vals[m] = vals[t], ids[m] = ids[t], ++m;
    }
    return m;
  }

 private:
  // Min-heap on score; ties broken by id so the kept set does not depend on insertion order.
  static bool cmp(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second > b.second);
  }
  int64_t k_ = 0;
  std::vector<std::pair<float, int32_t>> heap_;
};

}  // namespace iceformer
