// The bfloat16 P V tiles (simd.h pair-word layout) in AVX-512: with AVX512-BF16's dot product where the CPU has it
// (functions built for that extension only, offered by avx512_bf16_kernels()), else emulated with two fp32 FMAs per
// pair (the same arithmetic: each bfloat16 product is exact in fp32, the high product is added first).
#include "simd.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
#include <immintrin.h>

#include <algorithm>

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

void to_pairs(const float* a, const float* b, int64_t n, uint32_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512i lo = bf16_bits(_mm512_maskz_loadu_ps(m, a + i));
    const __m512i hi = b != nullptr ? bf16_bits(_mm512_maskz_loadu_ps(m, b + i)) : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(out + i, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
}

void repair(const uint32_t* a, int ha, const uint32_t* b, int hb, int64_t n, uint32_t* out) {
  const __m512i low = _mm512_set1_epi32(0xffff);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512i x = _mm512_srli_epi32(_mm512_maskz_loadu_epi32(m, a + i), 16 * ha);
    const __m512i y =
        b != nullptr ? _mm512_srli_epi32(_mm512_maskz_loadu_epi32(m, b + i), 16 * hb) : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(out + i, m, _mm512_or_si512(_mm512_and_si512(x, low), _mm512_slli_epi32(y, 16)));
  }
}

void pv_tile_bf16(const float* p, int64_t ldp, int64_t rows, int64_t cols, const uint32_t* vw, int64_t dv, float* o,
                  int64_t ldo) {
  pv_tile_t<false>(p, ldp, rows, cols, vw, dv, o, ldo);
}

// The only function built for AVX512-BF16; the dispatch point checks the CPU before offering it.
__attribute__((target("avx512bf16"))) void pv_tile_bf16_hw(const float* p, int64_t ldp, int64_t rows, int64_t cols,
                                                           const uint32_t* vw, int64_t dv, float* o, int64_t ldo) {
  pv_tile_t<true>(p, ldp, rows, cols, vw, dv, o, ldo);
}

}  // namespace avx512
}  // namespace iceformer

#endif
