// Low-rank candidate scoring, the default retrieval of the k-NN path.
//
// Per (batch, KV head): a rank-r factorisation of the scores, q . k ~ (q A)(k X) with X (D x r) the top-r
// eigenvectors of Gq Gk (Gk-orthonormal) and A = Gk X, Gk and Gq the second moments of the keys and of the group's
// queries (subspace iteration on stride samples; lowrank.cc says why the queries matter). The keys are projected
// once, Kr = K X, quantised to 8 bits per dimension and packed in 16-key panels. A block of queries then scores every
// visible key approximately with one register-blocked integer GEMM, (Q A)(K X)^T ~ Q K^T, and keeps the best
// `budget` keys per row for exact re-scoring (lowrank_scan.cc).
#pragma once
#include <cstdint>
#include <vector>

#include "key_marks.h"
#include "params.h"

namespace iceformer {

struct LowRankSet {
  int64_t r = 0, r4 = 0, per_head = 0;  // rank, 4-dimension groups (r rounded up / 4), bytes per (b, hkv)
  std::vector<float> kbasis;            // [B*Hkv][r][D]: X^T, the keys' directions (lowrank.cc)
  std::vector<float> qbasis;            // [B*Hkv][r][D]: (Gk X)^T, the queries' directions
  std::vector<float> kscale;            // [B*Hkv][r]: s_d, the 8-bit step of dimension d (max |(K X)_d| / 127)
  std::vector<uint8_t> panels;          // [B*Hkv][per_head]: K X in 8 bits, panels of 16 keys (simd.h)
};

// Sizes the set for p (rank min(rank, D)), with room for max(capacity, T) keys per (b, hkv).
void init_lowrank(const AttentionParams& p, int64_t rank, LowRankSet* set, int64_t capacity = 0);
// Basis and projected keys of (b, hkv).
void build_lowrank(const AttentionParams& p, int64_t b, int64_t hkv, LowRankSet* set);
// Codes the keys [j0, j1) of (b, hkv) with its existing basis and scales (coordinates beyond 127 steps clamp): a KV
// cache's new rows (decode_index.h).
void code_keys(const AttentionParams& p, int64_t b, int64_t hkv, int64_t j0, int64_t j1, LowRankSet* set);
// Marks in `in` the keys visible to some query row of [i0, i1) of (b, hq) for hq in [hq0, hq0 + heads) (one KV
// group: the rows share its codes, scanned once) whose approximate score is among that row's best ~`budget` (a
// per-row threshold estimated from a sample of the keys, aimed slightly above budget; no trim). real_prefix[j] =
// real (unpadded) keys of batch row b in [0, j).
void lowrank_union(const AttentionParams& p, const LowRankSet& set, const int64_t* real_prefix, int64_t b, int64_t hq0,
                   int64_t heads, int64_t i0, int64_t i1, int64_t budget, KeyMarks* in);

}  // namespace iceformer
