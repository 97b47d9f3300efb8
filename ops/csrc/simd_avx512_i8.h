// The AVX-512 low-rank integer scan (simd.h int8 layout), shared by simd_avx512.cc (16-bit multiply-adds) and
// simd_avx512_vnni.cc (the AVX512-VNNI dot product; that file alone is built for the extension). Everything here has
// internal linkage, so neither file's build of it can stand in for the other's at link time.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "simd.h"
#include "simd_avx512_common.h"

namespace iceformer {
namespace avx512 {
namespace {

struct FilterSink {
  const int64_t* vis;
  const float* thr;
  int32_t* idx;
  float* val;
  int64_t cap;
  int64_t* count;
  void operator()(int64_t r, int64_t pn, __m512 v) const {
    const int64_t left = vis[r] - pn * kPanel;
    if (left <= 0) return;
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(tail_mask(left), v, _mm512_set1_ps(thr[r]), _CMP_GT_OQ);
    if (!hit) return;
    const int n = __builtin_popcount(hit);
    const int64_t at = r * cap + count[r];
    const __m512i cols = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int>(pn * kPanel)));
    // Register compress then a plain masked store (memory-destination compress is slow on some CPUs).
    _mm512_mask_storeu_epi32(idx + at, tail_mask(n), _mm512_maskz_compress_epi32(hit, cols));
    _mm512_mask_storeu_ps(val + at, tail_mask(n), _mm512_maskz_compress_ps(hit, v));
    count[r] += n;
  }
};

// acc += the 16 lanes' 4-byte dot products of x (unsigned) and w (4 signed bytes). kVnni: one AVX512-VNNI
// instruction (compiled for that extension only, see below); else the even and the odd bytes widened to 16 bits and
// two 16-bit multiply-adds (each sums a pair of products into 32 bits: exact, the same integers).
template <bool kVnni>
inline __attribute__((always_inline)) __m512i i8_step(__m512i acc, __m512i x_even, __m512i x_odd, __m512i x,
                                                      uint32_t w) {
  const __m512i wv = _mm512_set1_epi32(static_cast<int>(w));
  if constexpr (kVnni) {
    return _mm512_dpbusd_epi32(acc, x, wv);
  } else {
    const __m512i w_even = _mm512_srai_epi16(_mm512_slli_epi16(wv, 8), 8), w_odd = _mm512_srai_epi16(wv, 8);
    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(x_even, w_even));
    return _mm512_add_epi32(acc, _mm512_madd_epi16(x_odd, w_odd));
  }
}

// Low-rank integer scores of R rows x NP (2 or 1) panels, R4 words each, accumulated in registers: a[i][r] holds
// panel i's 16 scores for row r.
template <int R, int NP, bool kVnni>
inline __attribute__((always_inline)) void qki_acc(const uint32_t* q, int64_t ldq, const uint8_t* kb, int64_t R4,
                                                   __m512i (&a)[NP][R]) {
  const __m512i low = _mm512_set1_epi16(0x00FF);
  for (int i = 0; i < NP; ++i)
    for (int r = 0; r < R; ++r) a[i][r] = _mm512_setzero_si512();
  for (int64_t g = 0; g < R4; ++g) {
    __m512i x[NP], xe[NP], xo[NP];
    for (int i = 0; i < NP; ++i) {
      x[i] = xe[i] = xo[i] = _mm512_loadu_si512(kb + (i * R4 + g) * 64);
      if constexpr (!kVnni) xe[i] = _mm512_and_si512(x[i], low), xo[i] = _mm512_srli_epi16(x[i], 8);
    }
    for (int r = 0; r < R; ++r) {
      const uint32_t w = q[r * ldq + g];
      for (int i = 0; i < NP; ++i) a[i][r] = i8_step<kVnni>(a[i][r], xe[i], xo[i], x[i], w);
    }
  }
}

// Filtered scan: every (row, panel) of R rows goes through the sink as floats.
template <int R, bool kVnni>
inline __attribute__((always_inline)) void qki_rows(const uint32_t* q, int64_t ldq, const uint8_t* kb, int64_t R4,
                                                    int64_t npanels, int64_t row0, const FilterSink& sink) {
  int64_t p = 0;
  for (; p + 2 <= npanels; p += 2) {
    __m512i a[2][R];
    qki_acc<R, 2, kVnni>(q, ldq, kb + p * R4 * 64, R4, a);
    for (int r = 0; r < R; ++r) {
      sink(row0 + r, p, _mm512_cvtepi32_ps(a[0][r]));
      sink(row0 + r, p + 1, _mm512_cvtepi32_ps(a[1][r]));
    }
  }
  if (p < npanels) {
    __m512i a[1][R];
    qki_acc<R, 1, kVnni>(q, ldq, kb + p * R4 * 64, R4, a);
    for (int r = 0; r < R; ++r) sink(row0 + r, p, _mm512_cvtepi32_ps(a[0][r]));
  }
}

// Lanes [0, left) of a panel (none for left <= 0).
inline __mmask16 lanes_below(int64_t left) { return left <= 0 ? __mmask16(0) : tail_mask(left); }

// Union scan of R rows: per panel, the OR over rows of (visible and score > thr) lane masks. Panels every row sees
// whole (all of them without a causal limit) take one integer compare per row and panel; the others also mask.
template <int R, bool kVnni>
inline __attribute__((always_inline)) void qki_union_rows(const uint32_t* q, int64_t ldq, const uint8_t* kb, int64_t R4,
                                                          int64_t npanels, const int64_t* vis, const int32_t* thr,
                                                          uint16_t* bits) {
  int64_t vmin = vis[0];
  for (int r = 1; r < R; ++r) vmin = std::min(vmin, vis[r]);
  int64_t p = 0;
  for (; p + 2 <= npanels; p += 2) {
    __m512i a[2][R];
    qki_acc<R, 2, kVnni>(q, ldq, kb + p * R4 * 64, R4, a);
    __mmask16 m0 = 0, m1 = 0;
    if ((p + 2) * kPanel <= vmin) {
      for (int r = 0; r < R; ++r) {
        const __m512i t = _mm512_set1_epi32(thr[r]);
        m0 = _kor_mask16(m0, _mm512_cmpgt_epi32_mask(a[0][r], t));
        m1 = _kor_mask16(m1, _mm512_cmpgt_epi32_mask(a[1][r], t));
      }
    } else {
      for (int r = 0; r < R; ++r) {
        const __m512i t = _mm512_set1_epi32(thr[r]);
        m0 = _kor_mask16(m0, _mm512_mask_cmpgt_epi32_mask(lanes_below(vis[r] - p * kPanel), a[0][r], t));
        m1 = _kor_mask16(m1, _mm512_mask_cmpgt_epi32_mask(lanes_below(vis[r] - (p + 1) * kPanel), a[1][r], t));
      }
    }
    bits[p] |= m0;
    bits[p + 1] |= m1;
  }
  if (p < npanels) {
    __m512i a[1][R];
    qki_acc<R, 1, kVnni>(q, ldq, kb + p * R4 * 64, R4, a);
    __mmask16 m0 = 0;
    for (int r = 0; r < R; ++r)
      m0 = _kor_mask16(
          m0, _mm512_mask_cmpgt_epi32_mask(lanes_below(vis[r] - p * kPanel), a[0][r], _mm512_set1_epi32(thr[r])));
    bits[p] |= m0;
  }
}

template <bool kVnni>
inline __attribute__((always_inline)) void qki_above(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb,
                                                     int64_t R4, int64_t npanels, const FilterSink& sink) {
  by_row_groups(rows, [&](auto R, int64_t r) {
    qki_rows<decltype(R)::value, kVnni>(q + r * ldq, ldq, kb, R4, npanels, r, sink);
  });
}

template <bool kVnni>
inline __attribute__((always_inline)) void qki_union(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb,
                                                     int64_t R4, int64_t npanels, const int64_t* vis,
                                                     const int32_t* thr, uint16_t* bits) {
  by_row_groups(rows, [&](auto R, int64_t r) {
    qki_union_rows<decltype(R)::value, kVnni>(q + r * ldq, ldq, kb, R4, npanels, vis + r, thr + r, bits);
  });
}

}  // namespace
}  // namespace avx512
}  // namespace iceformer
