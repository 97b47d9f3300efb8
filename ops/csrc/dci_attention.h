// k-NN sparse attention for query rows, the engine of the Prioritized-DCI search (search = 1; the low-rank
// search runs union_attention.h): always-attended sinks and local window, per-row retrieval of candidates, exact
// re-scoring, top-k, optional tail estimate, fused online softmax and value sum.
#pragma once
#include <cstdint>
#include <vector>

#include "dci_index.h"
#include "exact_attention.h"
#include "knn_common.h"
#include "params.h"

namespace iceformer {

// Rows [i0, i1) of y[b, hq] by k-NN attention over index `idx` of (b, hq / group). keys_scored[r] receives
// the number of keys scored exactly for row i0 + r, or -(visible keys) - 1 for a row sent back to exact
// attention by tail_limit. real_prefix[j] = real keys of batch row b in [0, j).
// head = (b, hq / group) packed (the sinks and the local window are attended by tiles).
void dci_rows(const AttentionParams& p, const PackedHead& head, const DciIndexView& idx, const std::vector<float>& dirs,
              const int64_t* real_prefix, int64_t b, int64_t hq, int64_t i0, int64_t i1, int32_t* keys_scored);

}  // namespace iceformer
