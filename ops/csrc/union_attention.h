// Block-union k-NN attention, the engine of the low-rank search (search = 0).
//
// The k-NN rows of one query block (up to kKnnBlockQ consecutive rows of one (batch, query head)) share one
// key set U: the sinks, the block's local windows and the union of every row's retrieved keys. Each row attends
// exactly to the keys of U it may see, so it loses nothing of its own retrieval by sharing; U is gathered once
// (K packed in panels, V rows contiguous) and scored by the exact path's register-blocked kernels, so a key of U
// costs a row what a key of the exact path costs, not a gather. Neighbouring queries retrieve largely the same
// keys (SmolLM2-135M at 8192 tokens: the union of 64 rows' exact top-128 holds 800-1250 of ~6000 visible keys).
// The visible keys outside U are estimated from one systematic sample per block, each sampled key weighted by
// the sampling step (unbiased for every row of the block; see dci_rows for the per-row variant).
#pragma once
#include <cstdint>
#include <vector>

#include "exact_attention.h"
#include "lowrank.h"
#include "params.h"

namespace iceformer {

// Query rows per k-NN block. The rows share one key set; fewer rows make it smaller (SmolLM2-135M at 8192 tokens:
// the union of the exact top-128 of 16 / 32 / 64 neighbouring rows holds ~415 / 570 / 820 keys) but pay the gather
// per fewer rows and lose the neighbours' keys: 16 and 32 rows measured no faster and 1.3-1.7x the error of 64.
constexpr int64_t kKnnBlockQ = 64;

// Rows [i0, i1) of y[b, hq] by block-union attention (+ tail estimate, tail_limit fallback to exact). head = (b,
// hq / group) packed, for fallback rows. keys_scored[r]: keys row i0 + r attended (U and sample), or
// -(visible keys) - 1 when the row was recomputed exactly.
void union_rows(const AttentionParams& p, const PackedHead& head, const LowRankSet& lowrank, const int64_t* real_prefix,
                int64_t b, int64_t hq, int64_t i0, int64_t i1, int32_t* keys_scored);

}  // namespace iceformer
