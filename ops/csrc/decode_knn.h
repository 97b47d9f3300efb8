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

// p: GroupQueryAttention's decode call (kLength key padding with the lengths L_b, q_offset the cached rows P_b).
Status run_decode_knn(const AttentionParams& p, DecodeIndex& index, const Parallel& par, CallStats* stats);

// After a prompt (prefill) call: builds the index of every (batch, KV head) from the cache and the prompt's queries.
Status build_decode_index(const AttentionParams& p, DecodeIndex& index, const Parallel& par);

}  // namespace iceformer
