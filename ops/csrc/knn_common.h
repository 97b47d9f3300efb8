// What the k-NN paths (the low-rank block sets, union_attention.h, the Prioritized-DCI rows, dci_attention.h, and
// the k-NN decode steps, decode_knn.h) share: the candidate budget of the contract, the tail estimate's sample and
// its tail_limit test, the gathered columns' padding and value rows, and the statistics code of a row sent to exact.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "params.h"
#include "rng.h"
#include "simd.h"
#include "stream_in.h"

namespace iceformer {

// keys_scored value of a row recomputed by exact attention: -(its visible keys) - 1 (saturated to int32).
inline int32_t sent_to_exact(int64_t visible) {
  return static_cast<int32_t>(-std::min<int64_t>(visible, std::numeric_limits<int32_t>::max() - 1) - 1);
}

// Candidates retrieved per query (before top-k): max_candidates, or candidate_fraction of the visible keys, or
// 4 top_k when neither is given; never below top_k nor above the visible keys.
inline int64_t candidate_budget(const KnnSettings& s, int64_t visible) {
  int64_t cap = std::numeric_limits<int64_t>::max();
  if (s.max_candidates > 0) cap = s.max_candidates;
  if (s.candidate_fraction > 0.f)
    cap = std::min<int64_t>(cap, static_cast<int64_t>(std::ceil(s.candidate_fraction * static_cast<double>(visible))));
  if (cap == std::numeric_limits<int64_t>::max()) cap = 4 * s.top_k;  // neither cap given
  return std::min<int64_t>(std::max<int64_t>(s.top_k, cap), std::max<int64_t>(visible, 0));
}

// The tail estimate's sample: a systematic sample of the positions [lo, hi], n = min(samples, hi + 1 - lo) of them,
// a random start in the first step h = (hi + 1 - lo) / n, then every h-th position. Each position is drawn with
// probability 1 / h, so h times a sum over the drawn positions (outside the retrieved keys) estimates the sum over
// all of them without bias; spreading the sample over the sequence lowers the variance on attention's positional
// structure. Calls take(j) for each drawn position; returns h.
template <typename Take>
double systematic_sample(Rng& rng, int64_t samples, int64_t lo, int64_t hi, Take&& take) {
  const int64_t n = std::min(samples, hi + 1 - lo);
  if (n <= 0) return 1.0;
  const double h = static_cast<double>(hi + 1 - lo) / static_cast<double>(n);
  const double start = static_cast<double>(lo) + rng.uniform() * h;
  for (int64_t t = 0; t < n; ++t) take(std::min<int64_t>(hi, static_cast<int64_t>(start + static_cast<double>(t) * h)));
  return h;
}

// A gathered column that holds no key (panel padding): beyond every row's last key, zero K and V.
constexpr int32_t kPadKey = std::numeric_limits<int32_t>::max();

inline void pad_to_panel(std::vector<int32_t>& keys) {
  while (keys.size() % kPanel != 0) keys.push_back(kPadKey);
}

// Masks a score row over gathered columns whose keys ascend (padding last) to the keys a query row may see, [first,
// last]: the columns outside become -inf. Returns the visible columns [lo, vis).
inline std::pair<int64_t, int64_t> mask_to_visible(const int32_t* key, int64_t width, int64_t first, int64_t last,
                                                   float* s) {
  const int64_t vis =
      std::upper_bound(key, key + width, static_cast<int32_t>(std::min<int64_t>(last, kPadKey - 1))) - key;
  const int64_t lo = std::min<int64_t>(vis, std::lower_bound(key, key + width, static_cast<int32_t>(first)) - key);
  std::fill(s + vis, s + width, -std::numeric_limits<float>::infinity());
  std::fill(s, s + lo, -std::numeric_limits<float>::infinity());
  return {lo, vis};
}

// dst[c] = the row keys[c] of V (Dv floats each) for c < n, zero for padding.
inline void gather_values(const float* V, int64_t Dv, const int32_t* keys, int64_t n, float* dst) {
  for (int64_t c = 0; c < n; ++c, dst += Dv) {
    if (c + 8 < n && keys[c + 8] != kPadKey)  // scattered rows: several in flight
      prefetch_row(V + static_cast<int64_t>(keys[c + 8]) * Dv, Dv);
    if (keys[c] == kPadKey)
      std::fill(dst, dst + Dv, 0.f);
    else
      std::copy_n(V + static_cast<int64_t>(keys[c]) * Dv, Dv, dst);
  }
}
// out[c] = the row keys[c] of V for c >= from (out keeps its rows before).
inline void gather_values(const float* V, int64_t Dv, const std::vector<int32_t>& keys, std::vector<float>* out,
                          size_t from = 0) {
  out->resize(keys.size() * Dv);
  gather_values(V, Dv, keys.data() + from, static_cast<int64_t>(keys.size() - from), out->data() + from * Dv);
}

// The tail_limit test: whether the estimated share of a row's softmax mass outside its retrieved keys exceeds
// tail_limit (then the sparse answer is unreliable and the row goes exact). (m1, s1): the row's online-softmax max
// and sum before the tail sample was added; (max, sum) after.
inline bool tail_too_heavy(float tail_limit, float m1, float s1, float max, float sum) {
  if (!(tail_limit < 1.f)) return false;
  const float kept = s1 * std::exp(m1 - max);
  if (!(sum > kept)) return false;  // the sample added no mass (or NaN)
  return 1.f - kept / sum > tail_limit;
}

}  // namespace iceformer
