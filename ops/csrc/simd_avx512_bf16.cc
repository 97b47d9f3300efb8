// The bfloat16 pair words and the emulated bfloat16 P V tile in AVX-512 (simd_avx512_bf16_hw.cc has the AVX512-BF16
// one).
#include "simd.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
#include <immintrin.h>

#include "simd_avx512_pv_bf16.h"

namespace iceformer {
namespace avx512 {
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

}  // namespace avx512
}  // namespace iceformer

#endif
