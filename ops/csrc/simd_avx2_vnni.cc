// The low-rank integer scan (simd.h int8 layout) with AVX-VNNI's 256-bit dot product (Intel Alder Lake and later
// client parts, Sapphire Rapids, AMD Zen 5): the only file built for that extension (-mavxvnni). The avx2-vnni tier is
// Highway's avx2 table with these two kernels; x86-64-v3 alone has no byte dot product (there the scan takes two
// 16-bit multiply-adds per 4 bytes, simd_hwy_scan-inl.h), here it is one instruction per 8 keys.
#include "simd.h"

#if defined(__AVXVNNI__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <algorithm>

#include "row_groups.h"

namespace iceformer {
namespace {

// Per row: the panel's 16 scores in two registers; shared: the panel's two key vectors (16 registers in all).
constexpr int kScanRows = 6;

// a[r][0..1]: the integer scores of the panel's keys 0-7 and 8-15 for row r.
template <int R>
inline __attribute__((always_inline)) void scan_panel(const uint32_t* q, int64_t ldq, const uint8_t* kb, int64_t R4,
                                                      __m256i (&a)[R][2]) {
  for (int r = 0; r < R; ++r) a[r][0] = a[r][1] = _mm256_setzero_si256();
  for (int64_t g = 0; g < R4; ++g) {
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kb + g * 64));
    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kb + g * 64 + 32));
    for (int r = 0; r < R; ++r) {
      const __m256i w = _mm256_set1_epi32(static_cast<int>(q[r * ldq + g]));
      a[r][0] = _mm256_dpbusd_avx_epi32(a[r][0], x0, w);  // unsigned key bytes x signed query bytes, exact in int32
      a[r][1] = _mm256_dpbusd_avx_epi32(a[r][1], x1, w);
    }
  }
}

// Bit c: lane c of the panel's scores (as floats or integers) is > thr.
inline uint32_t above_bits(const __m256 (&s)[2], float thr) {
  const __m256 t = _mm256_set1_ps(thr);
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s[0], t, _CMP_GT_OQ))) |
         static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s[1], t, _CMP_GT_OQ))) << 8;
}
inline uint32_t above_bits(const __m256i (&a)[2], int32_t thr) {
  const __m256i t = _mm256_set1_epi32(thr);
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(a[0], t)))) |
         static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(a[1], t)))) << 8;
}

// Lanes [0, left) of a panel (none for left <= 0).
inline uint32_t lanes_below(int64_t left) { return left <= 0 ? 0u : left >= 16 ? 0xFFFFu : (1u << left) - 1u; }

void qk_above_i8(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                 const int64_t* vis, const float* thr, int32_t* idx, float* val, int64_t cap, int64_t* count) {
  by_row_groups<kScanRows>(rows, [&](auto R, int64_t r0) {
    constexpr int kR = decltype(R)::value;
    for (int64_t p = 0; p < npanels; ++p) {
      __m256i a[kR][2];
      scan_panel<kR>(q + r0 * ldq, ldq, kb + p * R4 * 64, R4, a);
      for (int t = 0; t < kR; ++t) {
        const int64_t r = r0 + t;
        const __m256 s[2] = {_mm256_cvtepi32_ps(a[t][0]), _mm256_cvtepi32_ps(a[t][1])};
        uint32_t hit = above_bits(s, thr[r]) & lanes_below(vis[r] - p * kPanel);
        if (hit == 0) continue;
        alignas(32) float sc[kPanel];
        _mm256_store_ps(sc, s[0]);
        _mm256_store_ps(sc + 8, s[1]);
        for (; hit != 0; hit &= hit - 1) {
          const int c = __builtin_ctz(hit);
          idx[r * cap + count[r]] = static_cast<int32_t>(p * kPanel + c);
          val[r * cap + count[r]] = sc[c];
          ++count[r];
        }
      }
    }
  });
}

void qk_union_i8(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                 const int64_t* vis, const int32_t* thr, uint16_t* bits) {
  by_row_groups<kScanRows>(rows, [&](auto R, int64_t r0) {
    constexpr int kR = decltype(R)::value;
    int64_t vmin = vis[r0];
    for (int t = 1; t < kR; ++t) vmin = std::min(vmin, vis[r0 + t]);
    for (int64_t p = 0; p < npanels; ++p) {
      __m256i a[kR][2];
      scan_panel<kR>(q + r0 * ldq, ldq, kb + p * R4 * 64, R4, a);
      uint32_t m = 0;
      if ((p + 1) * kPanel <= vmin) {  // every row sees the whole panel: OR the compares, one mask extraction
        __m256i any[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int t = 0; t < kR; ++t) {
          const __m256i th = _mm256_set1_epi32(thr[r0 + t]);
          any[0] = _mm256_or_si256(any[0], _mm256_cmpgt_epi32(a[t][0], th));
          any[1] = _mm256_or_si256(any[1], _mm256_cmpgt_epi32(a[t][1], th));
        }
        m = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(any[0]))) |
            static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(any[1]))) << 8;
      } else {
        for (int t = 0; t < kR; ++t) m |= above_bits(a[t], thr[r0 + t]) & lanes_below(vis[r0 + t] - p * kPanel);
      }
      bits[p] |= static_cast<uint16_t>(m);
    }
  });
}

}  // namespace

const Kernels* avx2_vnni_kernels() {
  const Kernels* avx2 = avx2_kernels();
  if (avx2 == nullptr) return nullptr;
  static const Kernels k = [avx2] {
    Kernels t = *avx2;
    t.name = "avx2-vnni";
    t.qk_above_i8 = qk_above_i8;
    t.qk_union_i8 = qk_union_i8;
    return t;
  }();
  return &k;
}

}  // namespace iceformer

#else
namespace iceformer {
const Kernels* avx2_vnni_kernels() { return nullptr; }
}  // namespace iceformer
#endif
