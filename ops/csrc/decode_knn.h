// k-NN decode (issue 31): the few query rows of a generation step attend the keys IceFormer's retrieval picks from a
// persistent index of the KV cache (decode_index.h) instead of reading the whole cache.
//
// Per (batch, KV head) and step: the index is refreshed (verified, extended by the step's new rows); each of the
// head group's g * S query rows scans the 8-bit codes (an eighth of K's bytes at rank 32) for its best ~budget keys
// (lowrank_scan.cc, the prefill's scan); the group attends exactly the union U of those keys with the sinks and the
// recent window, plus a systematic tail sample of the visible keys outside U, each sampled key weighted by the
// sampling step (knn_common.h, as the prefill's block sets do). Only U's and the sample's K and V rows are read.
// A group goes to flash decoding (decode_attention.h) when it sees fewer than min_keys keys, when U and the sample
// would not read less than kMaxDecodeShare of its keys, when a row's tail is too heavy (tail_limit), when a gathered
// key row fails its hash (the index is then rebuilt), or when its output is not finite.
#pragma once
#include <vector>

#include "attention.h"
#include "decode_index.h"
#include "params.h"
#include "status.h"

namespace iceformer {

constexpr double kMaxDecodeShare = 0.5;
// A decode row retrieves this many times the contract's per-row candidate budget (max_candidates): a prefill row also
// attends its block's 63 neighbours' retrievals (U of 64 rows holds ~1300-1700 keys at budget 256), a decode row only
// its head group's. Qwen2.5-Coder-0.5B, 16k cached keys, layer 22: 6.4% output error at 1x, 3.6% at 2x, 1.7% at 4x
// (docs/decisions.md).
constexpr int64_t kDecodeBudgetScale = 4;

// Attention over a KV cache with the kernel instance's indexes (nullptr: none kept). p: kLength key padding (L_b real
// keys per batch row, a prefix) and q_offset (the position of query row 0); prompt: the call starts a sequence.
// Calls of kMinQueriesForIndex rows or more run the KnnAttention driver, then, after a prompt on the k-NN path's
// settings (top_k > 0, search 0) with a cache that can reach min_keys, build the index from the cache and the
// prompt's queries; shorter calls run k-NN decode from min_keys visible keys on, flash decoding below.
Status attend_with_index(const AttentionParams& p, DecodeIndexCache* indexes, bool prompt, const Parallel& par,
                         const HostAllocator& mem, CallStats* stats);

// KnnAttention's view of its keys as a cache (exports that feed it Concat(past, new)): lengths L_b and query offsets
// T - S, when nothing but causality, a hard window and right padding limits the keys (no attn_mask; a
// key_padding_mask whose real keys are a prefix of each batch row). False: no such view.
bool cache_view(const AttentionParams& p, std::vector<int64_t>* len, std::vector<int64_t>* offset);

}  // namespace iceformer
