// k-NN sparse attention for query rows, the engine of the Prioritized-DCI search (search = 1; the low-rank
// search runs union_attention.h): always-attended sinks and local window, per-row retrieval of candidates, exact re-scoring, top-k, optional tail estimate, fused online softmax and value sum.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "knn_index.h"
#include "params.h"

namespace iceformer {

// keys_scored value of a row recomputed by exact attention: -(its visible keys) - 1 (saturated to int32).
inline int32_t sent_to_exact(int64_t visible) {
  return static_cast<int32_t>(-std::min<int64_t>(visible, std::numeric_limits<int32_t>::max() - 1) - 1);
}

// Candidates the walk retrieves per query (before top-k): the budget rule of the contract.
int64_t candidate_budget(const KnnSettings& s, int64_t visible);

// Rows [i0, i1) of y[b, hq] by k-NN attention over index `idx` of (b, hq / group). keys_scored[r] receives
// the number of keys scored exactly for row i0 + r, or -(visible keys) - 1 for a row sent back to exact
// attention by tail_limit. real_prefix[j] = real keys of batch row b in [0, j).
// kp = packed K of (b, hq / group) (the sinks and the local window are attended by tiles).
void knn_rows(const AttentionParams& p, const float* kp, const KnnIndexView& idx, const std::vector<float>& dirs,
              const int64_t* real_prefix, int64_t b, int64_t hq, int64_t i0, int64_t i1, int32_t* keys_scored);

// For inspection (recall measurement): the keys query row i of a single-head call (B = Hq = Hkv = 1, no masks)
// attends to (sinks, window, retrieved top_k), written to out (at most cap). Returns how many.
int64_t select_for_inspection(const AttentionParams& p, const KnnIndexView& idx, const std::vector<float>& dirs,
                              int64_t i, int32_t* out, int64_t cap);
}  // namespace iceformer
