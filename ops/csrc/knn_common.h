// What both k-NN paths (the low-rank block sets, union_attention.h, and the Prioritized-DCI rows,
// dci_attention.h) share: the candidate budget of the contract and the statistics code of a row sent to exact.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "params.h"

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

}  // namespace iceformer
