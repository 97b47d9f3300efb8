// The AVX-512 bfloat16 P V tiles (simd.h pair-word layout), shared by simd_avx512_bf16.cc (emulated with two fp32
// FMAs per pair) and simd_avx512_bf16_hw.cc (AVX512-BF16's dot product; that file alone is built for the extension).
// The arithmetic is the same: each bfloat16 product is exact in fp32 and the high product is added first.
// Internal linkage, so neither file's build can stand in for the other's at link time.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "simd_avx512_common.h"

namespace iceformer {
namespace avx512 {
namespace {

// acc + hi(x) hi(w) + lo(x) lo(w) per lane, w one pair word for all lanes.
template <bool kHw>
inline __attribute__((always_inline)) __m512 pair_step(__m512 acc, __m512i x, uint32_t w) {
  if constexpr (kHw) {
    return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)_mm512_set1_epi32(static_cast<int>(w)));
  } else {
    const __m512 whi = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(w & 0xffff0000u)));
    const __m512 wlo = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(w << 16)));
    acc = _mm512_fmadd_ps(whi, _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(int(0xffff0000u)))), acc);
    return _mm512_fmadd_ps(wlo, _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), acc);
  }
}

// R rows of O += P V over cw pair words per row (pw[r*ldw + c2] = pair(p[2 c2], p[2 c2 + 1])), 32 value columns
// at a time (masked at the dv tail).
template <int R, bool kHw>
inline __attribute__((always_inline)) void pv_rows(const uint32_t* pw, int64_t ldw, int64_t cw, const uint32_t* vw,
                                                   int64_t dv, float* o, int64_t ldo) {
  for (int64_t e = 0; e < dv; e += 32) {
    const __mmask16 m0 = tail_mask(dv - e), m1 = tail_mask(dv - e - 16 > 0 ? dv - e - 16 : 0);
    __m512 a0[R], a1[R];
    for (int r = 0; r < R; ++r) {
      a0[r] = _mm512_maskz_loadu_ps(m0, o + r * ldo + e);
      a1[r] = _mm512_maskz_loadu_ps(m1, o + r * ldo + e + 16);
    }
    for (int64_t c2 = 0; c2 < cw; ++c2) {
      const __m512i x0 = _mm512_maskz_loadu_epi32(m0, vw + c2 * dv + e);
      const __m512i x1 = _mm512_maskz_loadu_epi32(m1, vw + c2 * dv + e + 16);
      for (int r = 0; r < R; ++r) {
        a0[r] = pair_step<kHw>(a0[r], x0, pw[r * ldw + c2]);
        a1[r] = pair_step<kHw>(a1[r], x1, pw[r * ldw + c2]);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm512_mask_storeu_ps(o + r * ldo + e, m0, a0[r]);
      _mm512_mask_storeu_ps(o + r * ldo + e + 16, m1, a1[r]);
    }
  }
}

// Row words of n (even) weights: out[c2] = pair(p[2 c2], p[2 c2 + 1]).
inline void row_pairs(const float* p, int64_t n, uint32_t* out) {
  for (int64_t c = 0; c < n; c += 16) {
    const __m512i b = bf16_bits(_mm512_maskz_loadu_ps(tail_mask(n - c), p + c));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c / 2), _mm512_cvtepi32_epi16(b));
  }
}

constexpr int64_t kPvChunk = 256;  // weight columns converted per pass (8 rows x 128 words on the stack)

template <bool kHw>
inline __attribute__((always_inline)) void pv_tile_t(const float* p, int64_t ldp, int64_t rows, int64_t cols,
                                                     const uint32_t* vw, int64_t dv, float* o, int64_t ldo) {
  alignas(64) uint32_t pw[8 * kPvChunk / 2 + 8];
  for (int64_t c0 = 0; c0 < cols; c0 += kPvChunk) {
    const int64_t n = std::min(kPvChunk, cols - c0);
    by_row_groups(rows, [&](auto R, int64_t r) {
      for (int t = 0; t < decltype(R)::value; ++t) row_pairs(p + (r + t) * ldp + c0, n, pw + t * (kPvChunk / 2));
      pv_rows<decltype(R)::value, kHw>(pw, kPvChunk / 2, n / 2, vw + (c0 / 2) * dv, dv, o + r * ldo, ldo);
    });
  }
}

}  // namespace
}  // namespace avx512
}  // namespace iceformer
