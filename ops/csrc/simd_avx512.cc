// AVX-512 kernels (the simd_avx512*.cc files alone are compiled with -mavx512f -mavx512dq -mavx512bw -mavx512vl
// -mfma; the dispatch point only selects them on CPUs that report those features).
#include "simd.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
#include <immintrin.h>

#include "simd_avx512_common.h"
#include "simd_avx512_i8.h"
#include "kth_bisect.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

namespace iceformer {
namespace {

using avx512::by_row_groups;
using avx512::FilterSink;
using avx512::qki_above;
using avx512::qki_union;
using avx512::tail_mask;

// exp(x): x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-6 Taylor polynomial (rel. error ~1e-7),
// 2^n applied with scalef. Inputs below -87.3 give exactly 0 (so -inf -> 0); NaN propagates.
inline __m512 exp512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.7f);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);  // x >= lo or NaN
  __m512 xc = _mm512_min_ps(hi, _mm512_max_ps(lo, x));            // NaN stays NaN (second operand)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 720.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
}

// Where qk_rows puts each finished panel of 16 scores of row r: stored into a tile, or filtered.
struct StoreSink {
  float* s;
  int64_t lds;
  void operator()(int64_t r, int64_t pn, __m512 v) const { _mm512_storeu_ps(s + r * lds + pn * kPanel, v); }
};

// R query rows (from row0) x (2 or 1) panels of 16 keys; accumulators stay in registers over the whole D loop.
template <int R, typename Sink>
void qk_rows(const float* q, int64_t ldq, const float* kp, int64_t D, int64_t npanels, int64_t row0, const Sink& sink) {
  int64_t p = 0;
  for (; p + 2 <= npanels; p += 2) {
    const float* k0 = kp + p * D * kPanel;
    const float* k1 = k0 + D * kPanel;
    __m512 a0[R], a1[R];
    for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m512 x0 = _mm512_loadu_ps(k0 + d * kPanel), x1 = _mm512_loadu_ps(k1 + d * kPanel);
      for (int r = 0; r < R; ++r) {
        const __m512 b = _mm512_set1_ps(q[r * ldq + d]);
        a0[r] = _mm512_fmadd_ps(b, x0, a0[r]);
        a1[r] = _mm512_fmadd_ps(b, x1, a1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      sink(row0 + r, p, a0[r]);
      sink(row0 + r, p + 1, a1[r]);
    }
  }
  if (p < npanels) {
    const float* k0 = kp + p * D * kPanel;
    __m512 a0[R];
    for (int r = 0; r < R; ++r) a0[r] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m512 x0 = _mm512_loadu_ps(k0 + d * kPanel);
      for (int r = 0; r < R; ++r) a0[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * ldq + d]), x0, a0[r]);
    }
    for (int r = 0; r < R; ++r) sink(row0 + r, p, a0[r]);
  }
}

template <typename Sink>
void qk_rows_any(const float* q, int64_t ldq, int64_t rows, const float* kp, int64_t D, int64_t npanels,
                 const Sink& sink) {
  by_row_groups(rows,
                [&](auto R, int64_t r) { qk_rows<decltype(R)::value>(q + r * ldq, ldq, kp, D, npanels, r, sink); });
}

void qk_tile(const float* q, int64_t ldq, int64_t rows, const float* kp, int64_t D, int64_t npanels, float* s,
             int64_t lds) {
  qk_rows_any(q, ldq, rows, kp, D, npanels, StoreSink{s, lds});
}

void qk_above_i8(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                 const int64_t* vis, const float* thr, int32_t* idx, float* val, int64_t cap, int64_t* count) {
  qki_above<false>(q, ldq, rows, kb, R4, npanels, FilterSink{vis, thr, idx, val, cap, count});
}

void qk_union_i8(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                 const int64_t* vis, const int32_t* thr, uint16_t* bits) {
  qki_union<false>(q, ldq, rows, kb, R4, npanels, vis, thr, bits);
}

// R rows of O, 32 value columns at a time (masked at the Dv tail), accumulated over all cols in registers.
template <int R>
void pv_rows(const float* p, int64_t ldp, int64_t cols, const float* v, int64_t ldv, int64_t dv, float* o,
             int64_t ldo) {
  for (int64_t e = 0; e < dv; e += 32) {
    const __mmask16 m0 = tail_mask(dv - e), m1 = tail_mask(dv - e - 16 > 0 ? dv - e - 16 : 0);
    __m512 a0[R], a1[R];
    for (int r = 0; r < R; ++r) {
      a0[r] = _mm512_maskz_loadu_ps(m0, o + r * ldo + e);
      a1[r] = _mm512_maskz_loadu_ps(m1, o + r * ldo + e + 16);
    }
    for (int64_t c = 0; c < cols; ++c) {
      const __m512 x0 = _mm512_maskz_loadu_ps(m0, v + c * ldv + e);
      const __m512 x1 = _mm512_maskz_loadu_ps(m1, v + c * ldv + e + 16);
      for (int r = 0; r < R; ++r) {
        const __m512 b = _mm512_set1_ps(p[r * ldp + c]);
        a0[r] = _mm512_fmadd_ps(b, x0, a0[r]);
        a1[r] = _mm512_fmadd_ps(b, x1, a1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm512_mask_storeu_ps(o + r * ldo + e, m0, a0[r]);
      _mm512_mask_storeu_ps(o + r * ldo + e + 16, m1, a1[r]);
    }
  }
}

void pv_tile(const float* p, int64_t ldp, int64_t rows, int64_t cols, const float* v, int64_t ldv, int64_t dv, float* o,
             int64_t ldo) {
  by_row_groups(rows, [&](auto R, int64_t r) {
    pv_rows<decltype(R)::value>(p + r * ldp, ldp, cols, v, ldv, dv, o + r * ldo, ldo);
  });
}

float vmax(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 nan = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 a =
        _mm512_mask_loadu_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), tail_mask(n - i), x + i);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    m = _mm512_max_ps(m, a);
  }
  if (nan) return std::numeric_limits<float>::quiet_NaN();
  return _mm512_reduce_max_ps(m);
}

float exp_sum(float* x, int64_t n, float mx) {
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 t = tail_mask(n - i);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(t, x + i), vm));
    _mm512_mask_storeu_ps(x + i, t, e);
    acc = _mm512_mask_add_ps(acc, t, acc, e);
  }
  return _mm512_reduce_add_ps(acc);
}

float dot(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 t = tail_mask(n - i);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(t, a + i), _mm512_maskz_loadu_ps(t, b + i), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

void scal(float a, float* x, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 t = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, t, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(t, x + i)));
  }
}

int64_t count_ge(const float* x, int64_t n, float thr) {
  const __m512 vt = _mm512_set1_ps(thr);
  int64_t m = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 t = tail_mask(n - i);
    m += __builtin_popcount(_mm512_mask_cmp_ps_mask(t, _mm512_maskz_loadu_ps(t, x + i), vt, _CMP_GE_OQ));
  }
  return m;
}

// kth_bisect.h's bisection over x[0, n) with this tier's count.
int32_t bisect_int(const float* x, int64_t n, int64_t k, int32_t lo, int32_t hi) {
  return iceformer::bisect_int([=](int32_t t) { return count_ge(x, n, static_cast<float>(t)); }, k, lo, hi);
}

// Two levels: the lane maxima of G = ceil(k / 16) runs of vectors are 16 G distinct elements, so their k-th largest
// m is a lower bound of the answer; the elements >= m are compacted to the front of v and the bisection runs over
// them from m, instead of over all n from -2^24 (the first bisection, over the maxima, starts from their least).
float kth_largest_int(float* v, int64_t n, int64_t k) {
  const int64_t nvec = (n + 15) / 16, groups = (k + 15) / 16;
  const int32_t hi = static_cast<int32_t>(vmax(v, n));
  if (groups > 16 || 2 * groups > nvec) return static_cast<float>(bisect_int(v, n, k, -(1 << 24), hi));
  const __m512 none = _mm512_set1_ps(-33554432.f);  // -2^25: below every value, so never a false maximum
  alignas(64) float maxima[16 * 16];
  __m512 low = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  for (int64_t g = 0; g < groups; ++g) {
    __m512 m = none;
    for (int64_t i = g * nvec / groups; i < (g + 1) * nvec / groups; ++i)
      m = _mm512_max_ps(m, _mm512_mask_loadu_ps(none, tail_mask(n - 16 * i), v + 16 * i));
    _mm512_store_ps(maxima + 16 * g, m);
    low = _mm512_min_ps(low, m);
  }
  const int32_t m = bisect_int(maxima, 16 * groups, k, static_cast<int32_t>(_mm512_reduce_min_ps(low)), hi);
  // Compact in place: the write position never passes the vector just read.
  const __m512 vm = _mm512_set1_ps(static_cast<float>(m));
  int64_t c = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 t = tail_mask(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(t, v + i);
    const __mmask16 keep = _mm512_mask_cmp_ps_mask(t, x, vm, _CMP_GE_OQ);
    _mm512_mask_storeu_ps(v + c, tail_mask(__builtin_popcount(keep)), _mm512_maskz_compress_ps(keep, x));
    c += __builtin_popcount(keep);
  }
  return static_cast<float>(bisect_int(v, c, k, m, hi));
}

// Loads min(n, 128) floats of x into up to 8 registers with their tail masks; returns how many registers.
inline int64_t load_chunk(const float* x, int64_t n, __m512* v, __mmask16* mk) {
  const int64_t nv = ((n < 128 ? n : 128) + 15) / 16;
  for (int64_t c = 0; c < nv; ++c) {
    mk[c] = tail_mask(n - 16 * c);
    v[c] = _mm512_maskz_loadu_ps(mk[c], x + 16 * c);
  }
  return nv;
}

// q stays in registers (chunks of 128 dims); four rows per step share one pass over q.
void gather_dot(const float* q, const float* rows, int64_t ld, const int32_t* ids, int64_t n, int64_t D, float scale,
                float* out) {
  for (int64_t t = 0; t < n; ++t) out[t] = 0.f;
  for (int64_t d0 = 0; d0 < D; d0 += 128) {
    __m512 qv[8];
    __mmask16 mk[8];
    const int64_t nv = load_chunk(q + d0, D - d0, qv, mk);
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
      const float* r0 = rows + static_cast<int64_t>(ids[t]) * ld + d0;
      const float* r1 = rows + static_cast<int64_t>(ids[t + 1]) * ld + d0;
      const float* r2 = rows + static_cast<int64_t>(ids[t + 2]) * ld + d0;
      const float* r3 = rows + static_cast<int64_t>(ids[t + 3]) * ld + d0;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t c = 0; c < nv; ++c) {
        a0 = _mm512_fmadd_ps(qv[c], _mm512_maskz_loadu_ps(mk[c], r0 + 16 * c), a0);
        a1 = _mm512_fmadd_ps(qv[c], _mm512_maskz_loadu_ps(mk[c], r1 + 16 * c), a1);
        a2 = _mm512_fmadd_ps(qv[c], _mm512_maskz_loadu_ps(mk[c], r2 + 16 * c), a2);
        a3 = _mm512_fmadd_ps(qv[c], _mm512_maskz_loadu_ps(mk[c], r3 + 16 * c), a3);
      }
      out[t] += _mm512_reduce_add_ps(a0);
      out[t + 1] += _mm512_reduce_add_ps(a1);
      out[t + 2] += _mm512_reduce_add_ps(a2);
      out[t + 3] += _mm512_reduce_add_ps(a3);
    }
    for (; t < n; ++t) {
      const float* r0 = rows + static_cast<int64_t>(ids[t]) * ld + d0;
      __m512 a0 = _mm512_setzero_ps();
      for (int64_t c = 0; c < nv; ++c) a0 = _mm512_fmadd_ps(qv[c], _mm512_maskz_loadu_ps(mk[c], r0 + 16 * c), a0);
      out[t] += _mm512_reduce_add_ps(a0);
    }
  }
  for (int64_t t = 0; t < n; ++t) out[t] *= scale;
}

// acc stays in registers (chunks of 128 dims) over all n rows.
void gather_axpy(const float* w, const float* rows, int64_t ld, const int32_t* ids, int64_t n, int64_t dv, float* acc) {
  for (int64_t e0 = 0; e0 < dv; e0 += 128) {
    __m512 a[8];
    __mmask16 mk[8];
    const int64_t nv = load_chunk(acc + e0, dv - e0, a, mk);
    for (int64_t t = 0; t < n; ++t) {
      if (w[t] == 0.f) continue;
      const __m512 wt = _mm512_set1_ps(w[t]);
      const float* r = rows + static_cast<int64_t>(ids[t]) * ld + e0;
      for (int64_t c = 0; c < nv; ++c) a[c] = _mm512_fmadd_ps(wt, _mm512_maskz_loadu_ps(mk[c], r + 16 * c), a[c]);
    }
    for (int64_t c = 0; c < nv; ++c) _mm512_mask_storeu_ps(acc + e0 + 16 * c, mk[c], a[c]);
  }
}

// 16 x 16 transposes: x[c] = rows[c][d0, d0 + 16) in, x[e] = column d0 + e (rows 0..15) out. Stage 1 interleaves
// row pairs, stage 2 gathers 4-row groups of one column per 128-bit lane, stages 3-4 move the lanes into place.
inline void transpose16(__m512 x[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // u[4g + k], lane L: column 4L + k, rows 4g..4g+3
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int k = 0; k < 4; ++k) {  // v: rows 0..7 of columns k, 4+k, 8+k, 12+k; w: rows 8..15; then whole columns
    const __m512 v0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88), v1 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xdd);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xdd);
    x[k] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    x[8 + k] = _mm512_shuffle_f32x4(v0, w0, 0xdd);
    x[4 + k] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    x[12 + k] = _mm512_shuffle_f32x4(v1, w1, 0xdd);
  }
}

void pack_panel(const float* const* rows, int64_t m, int64_t D, float* panel) {
  for (int64_t d0 = 0; d0 < D; d0 += 16) {
    const __mmask16 mk = tail_mask(D - d0);
    __m512 x[16];
    for (int64_t c = 0; c < 16; ++c) x[c] = c < m ? _mm512_maskz_loadu_ps(mk, rows[c] + d0) : _mm512_setzero_ps();
    transpose16(x);
    for (int64_t e = 0; e < 16 && d0 + e < D; ++e) _mm512_storeu_ps(panel + (d0 + e) * kPanel, x[e]);
  }
}

}  // namespace

const Kernels* avx512_kernels() {
  static const Kernels k{
      "avx512", qk_tile, avx512::qk_keys, qk_above_i8, qk_union_i8, pv_tile, vmax, exp_sum, dot, scal, count_ge,
      kth_largest_int, gather_dot, gather_axpy, pack_panel, avx512::to_pairs, avx512::repair, avx512::pv_tile_bf16,
      // Highway's AVX-512 build (the same source as the AVX2 tier's; nothing to hand-tune)
      avx512_hwy_kernels() != nullptr ? avx512_hwy_kernels()->row_hash : scalar_kernels().row_hash, false};
  return &k;
}

const Kernels* avx512_vnni_kernels() {
  static const Kernels k = [] {
    Kernels b = *avx512_kernels();
    b.name = "avx512-vnni";
    b.qk_above_i8 = avx512::qk_above_i8_vnni;
    b.qk_union_i8 = avx512::qk_union_i8_vnni;
    return b;
  }();
  return &k;
}

const Kernels* avx512_bf16_kernels() {
  static const Kernels k = [] {
    Kernels b = *avx512_vnni_kernels();
    b.name = "avx512-vnni-bf16";
    b.pv_tile_bf16 = avx512::pv_tile_bf16_hw;
    b.pv_bf16 = true;
    return b;
  }();
  return &k;
}

}  // namespace iceformer

#else

namespace iceformer {
const Kernels* avx512_kernels() { return nullptr; }
const Kernels* avx512_vnni_kernels() { return nullptr; }
const Kernels* avx512_bf16_kernels() { return nullptr; }
}  // namespace iceformer

#endif
