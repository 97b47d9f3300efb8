// Exact attention, blocked flash-style: per (batch, query head, block of queries), the keys are visited in
// blocks; scores of a Bq x Bk tile come from one register-blocked kernel over K packed in 16-key panels,
// then an online softmax per row, then P x V into the output rows. Never an S x T matrix.
#pragma once
#include <cstdint>

#include "online_softmax.h"
#include "params.h"

namespace iceformer {

constexpr int64_t kExactBlockQ = 64;
constexpr int64_t kExactBlockK = 256;

// Floats needed to pack the keys of one (batch, KV head).
int64_t packed_keys_size(const AttentionShape& s);

// Packs rows ids[0, n) of K (row length D; ids = nullptr: rows 0..n-1) into panels of 16 keys (see simd.h),
// zero up to the next panel boundary.
void pack_panels(const float* K, int64_t D, const int32_t* ids, int64_t n, float* dst);
// Packs K[b, hkv] (T x D) into panels of 16 keys (see simd.h), zero beyond T.
void pack_keys(const AttentionParams& p, int64_t b, int64_t hkv, float* dst);

// What the tiles of one (batch, KV head) read: K packed in panels (pack_keys) and, on the k-NN path, V as bfloat16
// pair words of consecutive keys (pack_value_pairs; P V then runs in bfloat16, as the k-NN block sets do), or
// nullptr for P V in fp32 from the input's V (the exact path).
struct PackedHead {
  const float* k = nullptr;
  const uint32_t* v_pairs = nullptr;
  bool v_finite = true;  // false: V holds a NaN or inf, and P V skips zero weights (pv_nonzero); true: not known
};

// o[r * ldo + e] += p[r * ldp + c] * V[key(c) * Dv + e] over the columns c < cols whose weight is not 0, key(c) =
// ids[c] (ids = nullptr: c). For a V with non-finite values: a key a row may not see has weight exactly 0, and 0 x inf
// is NaN, so the tile kernels (which multiply every column) would poison rows that never see the key.
void pv_nonzero(const float* p, int64_t ldp, int64_t rows, int64_t cols, const float* V, int64_t Dv, const int32_t* ids,
                float* o, int64_t ldo);

// Words needed by pack_value_pairs for one (batch, KV head): ceil(T / 2) pairs of Dv.
int64_t value_pairs_size(const AttentionShape& s);
// V[b, hkv] as pair words (simd.h): dst[(j / 2) * Dv + e] = pair(V[j][e], V[j + 1][e]), zero beyond T.
void pack_value_pairs(const AttentionParams& p, int64_t b, int64_t hkv, uint32_t* dst);

// Which keys attend_tiles visits for query row i (on top of causality and masks): all (window < 0), or the
// sinks j < sinks and the recent keys j > last(i) - window.
struct KeyBand {
  int64_t sinks = 0;
  int64_t window = -1;
};

// Online-softmax states (acc in o, row stride ldo) of query rows row_ids[0..rows) (ascending, rows <= 64) of
// (b, hq) over the keys of `band`, by tiles. head: (b, hq / group) packed.
void attend_tiles(const AttentionParams& p, const PackedHead& head, int64_t b, int64_t hq, const int64_t* row_ids,
                  int64_t rows, const KeyBand& band, float* o, int64_t ldo, OnlineSoftmax* states);

// Rows row_ids[0..rows) (ascending) of y[b, hq] by exact attention over all keys they may see. A block whose output is
// not finite while head.v_finite is true is recomputed with pv_nonzero (V may hold a non-finite value).
void exact_rows(const AttentionParams& p, const PackedHead& head, int64_t b, int64_t hq, const int64_t* row_ids,
                int64_t rows);
// The same for the rows [i0, i1).
void exact_rows(const AttentionParams& p, const PackedHead& head, int64_t b, int64_t hq, int64_t i0, int64_t i1);

}  // namespace iceformer
