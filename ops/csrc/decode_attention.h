// Exact attention for a few queries over a KV cache read in place (decode steps, speculative or chunked steps of
// S < 32 tokens): flash decoding. Keys of each (batch, KV head) are split into chunks; one task per
// (batch, KV head, chunk) scores the chunk for all g * S query rows of the head group (g = Hq / Hkv), keeping a
// partial softmax state per row; the partials are then merged per row in chunk order, so the result does not
// depend on the thread count. Visibility: causal / window positions (q_offset) and kLength key padding, as in
// masking.h; no attn_mask.
#pragma once

#include <vector>

#include "attention.h"
#include "params.h"
#include "status.h"

namespace iceformer {

constexpr int64_t kDecodeChunk = 512;  // keys per task: 128 KiB of K and V at D = 64, in L2 beside the scores

// The rows of (b, hkv)'s head group by flash decoding in one task (its chunks in turn, then the merge; partials:
// scratch): the k-NN decode path's exact groups, with run_decode's result.
void decode_group_exact(const AttentionParams& p, int64_t b, int64_t hkv, std::vector<float>* partials);

// p.y [B,Hq,S,Dv] from p.q [B,Hq,S,D] and the cache p.k / p.v (p.kv_rows rows per head).
Status run_decode(const AttentionParams& p, const Parallel& par, const HostAllocator& mem, CallStats* stats);

}  // namespace iceformer
