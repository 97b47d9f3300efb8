// Exact attention, blocked flash-style: per (batch, query head, block of queries), the keys are visited in
// blocks; scores of a Bq x Bk tile come from one register-blocked kernel over K packed in 16-key panels,
// then an online softmax per row, then P x V into the output rows. Never an S x T matrix.
#pragma once
#include <cstdint>

#include "params.h"

namespace iceformer {

constexpr int64_t kExactBlockQ = 64;
constexpr int64_t kExactBlockK = 256;

// Floats needed to pack the keys of one (batch, KV head).
int64_t packed_keys_size(const AttentionShape& s);

// Packs K[b, hkv] (T x D) into panels of 16 keys (see simd.h), zero beyond T.
void pack_keys(const AttentionParams& p, int64_t b, int64_t hkv, float* dst);

// Rows [i0, i1) of y[b, hq] by exact attention over all keys they may see. kp = packed K[b, hq / group].
void exact_rows(const AttentionParams& p, const float* kp, int64_t b, int64_t hq, int64_t i0, int64_t i1);

}  // namespace iceformer
