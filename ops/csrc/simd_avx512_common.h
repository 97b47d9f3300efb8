// Helpers shared by the AVX-512 kernel files (included only by files compiled with the AVX-512 flags).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "row_groups.h"

// GCC 12 reports the intrinsics' internal undefined operands (avx512fintrin.h "__Y") as maybe-uninitialized once
// bf16_bits is inlined: a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace iceformer {
namespace avx512 {
// Internal linkage: each AVX-512 file has its own copy, built with that file's target flags.
namespace {

// The first n (<= 16) lanes.
inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

// bfloat16 bits of each lane, in its low half: round to nearest even, NaN kept quiet (as bf16.h).
inline __m512i bf16_bits(__m512 x) {
  const __m512i b = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_mask_blend_epi32(nan, r, _mm512_srli_epi32(_mm512_or_si512(b, _mm512_set1_epi32(0x400000)), 16));
}

// The kernels' row groups: 8 rows.
template <typename F>
inline __attribute__((always_inline)) void by_row_groups(int64_t rows, const F& f) {
  iceformer::by_row_groups<8>(rows, f);
}

}  // namespace

// Scores of a few query rows against keys read in place (simd_avx512_keys.cc).
void qk_keys(const float* q, int64_t ldq, int64_t rows, const float* k, int64_t ldk, int64_t n, int64_t D, float* s,
             int64_t lds);
// The bfloat16 P V kernels (simd_avx512_bf16.cc): emulated with fp32 FMAs, and the AVX512-BF16 build (_hw).
void to_pairs(const float* a, const float* b, int64_t n, uint32_t* out);
void repair(const uint32_t* a, int ha, const uint32_t* b, int hb, int64_t n, uint32_t* out);
void pv_tile_bf16(const float* p, int64_t ldp, int64_t rows, int64_t cols, const uint32_t* vw, int64_t dv, float* o,
                  int64_t ldo);
void pv_tile_bf16_hw(const float* p, int64_t ldp, int64_t rows, int64_t cols, const uint32_t* vw, int64_t dv, float* o,
                     int64_t ldo);
// The low-rank scan with the AVX512-VNNI dot product (simd_avx512_vnni.cc).
void qk_above_i8_vnni(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                      const int64_t* vis, const float* thr, int32_t* idx, float* val, int64_t cap, int64_t* count);
void qk_union_i8_vnni(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                      const int64_t* vis, const int32_t* thr, uint16_t* bits);

}  // namespace avx512
}  // namespace iceformer
