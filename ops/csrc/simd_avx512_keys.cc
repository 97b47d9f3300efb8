// Scores of a few query rows against keys read in place (simd.h qk_keys), for decode steps: 4 rows x 4 keys per
// block, 16 accumulators of D-long FMA chains, reduced to one vector of 16 scores by a transposing add tree (45
// shuffles and adds per 16 dot products, against ~8 per dot product for a horizontal sum each). Built with the
// AVX-512 flags (CMakeLists.txt); the dispatch point selects it only on CPUs that report them.
#include "simd.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
#include <algorithm>

#include "simd_avx512_common.h"

namespace iceformer {
namespace avx512 {
namespace {

constexpr int kRows = 4, kKeys = 4;  // accumulator a = row * kKeys + key

// Lane a of the result = the sum of v[a]'s 16 lanes.
inline __m512 reduce16(const __m512* v) {
  __m512 w[8], x[4], u[2];
  // Pairs of vectors: per 128-bit block, [a0+a2, b0+b2, a1+a3, b1+b3].
  for (int k = 0; k < 8; ++k)
    w[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
  // Pairs of those as 64-bit lanes: per 128-bit block, one partial sum of each of 4 vectors.
  for (int k = 0; k < 4; ++k) {
    const __m512d c = _mm512_castps_pd(w[2 * k]), d = _mm512_castps_pd(w[2 * k + 1]);
    x[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
  }
  // Across 128-bit blocks: even blocks plus odd blocks, twice.
  for (int k = 0; k < 2; ++k)
    u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * k], x[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x[2 * k], x[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// One block: rows q[0..3] (pointers), keys k[0..3]; scores of the first `m` keys stored for the first `nr` rows.
inline void block(const float* const* q, const float* const* k, int64_t D, int64_t nr, int64_t m, float* s,
                  int64_t lds) {
  __m512 acc[kRows * kKeys];
#pragma GCC unroll 16
  for (int a = 0; a < kRows * kKeys; ++a) acc[a] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 t = tail_mask(D - d);
    __m512 qv[kRows];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) qv[r] = _mm512_maskz_loadu_ps(t, q[r] + d);
#pragma GCC unroll 4
    for (int c = 0; c < kKeys; ++c) {
      const __m512 kv = _mm512_maskz_loadu_ps(t, k[c] + d);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) acc[r * kKeys + c] = _mm512_fmadd_ps(qv[r], kv, acc[r * kKeys + c]);
    }
  }
  const __m512 sums = reduce16(acc);
  const __mmask16 keys = static_cast<__mmask16>((1u << m) - 1u);
  // Row r's scores are lanes [r * kKeys, r * kKeys + m): stored from s + r * lds, shifted back by r * kKeys lanes
  // (masked-off lanes are never accessed).
  for (int64_t r = 0; r < nr; ++r)
    _mm512_mask_storeu_ps(s + r * lds - r * kKeys, static_cast<__mmask16>(keys << (r * kKeys)), sums);
}

}  // namespace

void qk_keys(const float* q, int64_t ldq, int64_t rows, const float* k, int64_t ldk, int64_t n, int64_t D, float* s,
             int64_t lds) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const float* qr[kRows];
    const int64_t nr = clamped_rows<kRows>(q, ldq, rows, r0, qr);
    for (int64_t c0 = 0; c0 < n; c0 += kKeys) {
      const float* kc[kKeys];
      block(qr, kc, D, nr, clamped_rows<kKeys>(k, ldk, n, c0, kc), s + r0 * lds + c0, lds);
    }
  }
}

}  // namespace avx512
}  // namespace iceformer

#endif
