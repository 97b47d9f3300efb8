// Low-rank candidate scoring, the default retrieval of the k-NN path.
//
// Per (batch, KV head): P = the top-r eigenvectors of K^T K (subspace iteration on a stride sample of the real
// keys), the keys projected once, Kr = K P, quantised to 8 bits per dimension and packed in 16-key panels. A block of
// queries then scores every visible key approximately with one register-blocked integer GEMM, (Q P)(K P)^T ~ Q K^T
// (8-bit rounding changed recall@128 of SmolLM2 at 16k keys by < 0.001 against float), and keeps the best `budget`
// keys per row for exact re-scoring. Measured on SmolLM2-135M (see README): at r = 16 the exact top-32 keys
// are among the best 128 approximate ones 90-98% of the time, where the random-direction DCI walk scoring the
// same number of candidates finds 44-69%.
#pragma once
#include <cstdint>
#include <vector>

#include "key_marks.h"
#include "params.h"

namespace iceformer {

struct LowRankSet {
  int64_t r = 0, r4 = 0, per_head = 0;  // rank, 4-dimension groups (r rounded up / 4), bytes per (b, hkv)
  std::vector<float> basis;             // [B*Hkv][r][D]: orthonormal rows
  std::vector<float> kscale;            // [B*Hkv][r]: s_d, the 8-bit step of dimension d (max |(K P)_d| / 127)
  std::vector<uint8_t> panels;          // [B*Hkv][per_head]: K P in 8 bits, panels of 16 keys (simd.h)
};

// Sizes the set for p (rank min(rank, D)).
void init_lowrank(const AttentionParams& p, int64_t rank, LowRankSet* set);
// Basis and projected keys of (b, hkv).
void build_lowrank(const AttentionParams& p, int64_t b, int64_t hkv, LowRankSet* set);
// Marks in `in` the keys visible to some query row of [i0, i1) of (b, hq) whose approximate score is
// among that row's best ~`budget` (a per-row threshold estimated from a sample of the keys, aimed slightly above
// budget; no trim). real_prefix[j] = real (unpadded) keys of batch row b in [0, j).
void lowrank_union(const AttentionParams& p, const LowRankSet& set, const int64_t* real_prefix, int64_t b, int64_t hq,
                   int64_t i0, int64_t i1, int64_t budget, KeyMarks* in);

}  // namespace iceformer
