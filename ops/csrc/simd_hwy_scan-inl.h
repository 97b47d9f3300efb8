// Highway kernels of the low-rank integer scan (simd.h int8 layout): per panel, 16 keys' 4-byte dot products with
// the query words, accumulated exactly in int32 as two 16-bit pairwise multiply-adds (even and odd bytes widened,
// the keys' halves made once per panel and group, shared by all rows). Included once per offered target by simd_hwy.cc
// (no include guard).
HWY_BEFORE_NAMESPACE();
namespace iceformer {
namespace HWY_NAMESPACE {

using DI16 = hn::Repartition<int16_t, DI>;
using VI16 = hn::Vec<DI16>;

// Per row: kVP accumulators; shared: the keys' even and odd halves (2 kVP) and the row's two query halves.
constexpr int kScanRows = rows_for(static_cast<int>(kVP), static_cast<int>(2 * kVP) + 3);

// a[r][v]: lanes v kN .. of the panel's 16 integer scores for row r.
template <int R>
HWY_INLINE void scan_panel(const uint32_t* q, int64_t ldq, const uint8_t* kb, int64_t R4, VI (&a)[R][kVP]) {
  const DI di;
  const DI16 d16;
  for (int r = 0; r < R; ++r)
    for (int64_t v = 0; v < kVP; ++v) a[r][v] = hn::Zero(di);
#if HWY_ARCH_X86
  // x86: unsigned key byte times signed query byte, adjacent pairs summed to int16 in one instruction (pmaddubsw;
  // it saturates, but |q8| <= kQueryLevels = 64 keeps a pair within 2 * 255 * 64 = 32640), then each key's two
  // pairs widened and added (pmaddwd by 1): exact, and ~1.5x fewer instructions than widening the bytes first.
  const hn::Repartition<uint8_t, DI> du8;
  const hn::Repartition<int8_t, DI> di8;
  const VI16 one = hn::Set(d16, int16_t{1});
  for (int64_t g = 0; g < R4; ++g) {
    hn::Vec<decltype(du8)> x[kVP];
    for (int64_t v = 0; v < kVP; ++v) x[v] = hn::LoadU(du8, kb + g * 64 + v * 4 * kN);
    for (int r = 0; r < R; ++r) {
      const auto w = hn::BitCast(di8, hn::Set(di, static_cast<int32_t>(q[r * ldq + g])));
      for (int64_t v = 0; v < kVP; ++v)
        a[r][v] = hn::Add(a[r][v], hn::WidenMulPairwiseAdd(di, hn::SatWidenMulPairwiseAdd(d16, x[v], w), one));
    }
  }
#else
  const hn::Repartition<uint16_t, DI> du16;
  for (int64_t g = 0; g < R4; ++g) {
    VI16 xe[kVP], xo[kVP];
    for (int64_t v = 0; v < kVP; ++v) {
      const auto x = hn::LoadU(du16, reinterpret_cast<const uint16_t*>(kb + g * 64 + v * 4 * kN));
      xe[v] = hn::BitCast(d16, hn::And(x, hn::Set(du16, uint16_t{0x00FF})));  // unsigned bytes 0, 2 of each word
      xo[v] = hn::BitCast(d16, hn::ShiftRight<8>(x));                         // bytes 1, 3
    }
    for (int r = 0; r < R; ++r) {
      const VI16 w = hn::BitCast(d16, hn::Set(di, static_cast<int32_t>(q[r * ldq + g])));
      const VI16 we = hn::ShiftRight<8>(hn::ShiftLeft<8>(w)), wo = hn::ShiftRight<8>(w);  // signed bytes widened
      for (int64_t v = 0; v < kVP; ++v)
        a[r][v] =
            hn::Add(a[r][v], hn::Add(hn::WidenMulPairwiseAdd(di, xe[v], we), hn::WidenMulPairwiseAdd(di, xo[v], wo)));
    }
  }
#endif
}

// Bit c of the result: lane c of the panel's scores is > t.
template <class V, class D>
HWY_INLINE uint32_t above_bits(D d, const V (&a)[kVP], hn::Vec<D> t) {
  uint32_t bits = 0;
  for (int64_t v = 0; v < kVP; ++v) bits |= static_cast<uint32_t>(hn::BitsFromMask(d, hn::Gt(a[v], t))) << (v * kN);
  return bits;
}

// Lanes [0, left) of a panel (none for left <= 0).
HWY_INLINE uint32_t lanes_below(int64_t left) { return left <= 0 ? 0u : left >= 16 ? 0xFFFFu : (1u << left) - 1u; }

void QkAboveI8(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
               const int64_t* vis, const float* thr, int32_t* idx, float* val, int64_t cap, int64_t* count) {
  const DI di;
  const DF df;
  by_row_groups<kScanRows>(rows, [&](auto R, int64_t r0) {
    constexpr int kR = decltype(R)::value;
    for (int64_t p = 0; p < npanels; ++p) {
      VI a[kR][kVP];
      scan_panel<kR>(q + r0 * ldq, ldq, kb + p * R4 * 64, R4, a);
      for (int t = 0; t < kR; ++t) {
        const int64_t r = r0 + t;
        VF s[kVP];
        for (int64_t v = 0; v < kVP; ++v) s[v] = hn::ConvertTo(df, a[t][v]);
        const VF th = hn::Set(df, thr[r]);
        const int64_t left = vis[r] - p * kPanel;
        if ((above_bits(df, s, th) & lanes_below(left)) == 0) continue;
        // The hits in column order, one vector at a time (a compress, not a loop over set bits: the threshold pass
        // keeps every visible score). Each store may write a whole vector: the row's count stays below 16 p + v kN
        // before it, so that stays within cap >= 16 npanels.
        for (int64_t v = 0; v < kVP; ++v) {
          const auto col = hn::Iota(di, static_cast<int32_t>(v * kN));
          const auto m =
              hn::And(hn::RebindMask(df, hn::Lt(col, hn::Set(di, static_cast<int32_t>(left)))), hn::Gt(s[v], th));
          hn::CompressStore(s[v], m, df, val + r * cap + count[r]);
          count[r] +=
              static_cast<int64_t>(hn::CompressStore(hn::Add(col, hn::Set(di, static_cast<int32_t>(p * kPanel))),
                                                     hn::RebindMask(di, m), di, idx + r * cap + count[r]));
        }
      }
    }
  });
}

void QkUnionI8(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
               const int64_t* vis, const int32_t* thr, uint16_t* bits) {
  const DI di;
  by_row_groups<kScanRows>(rows, [&](auto R, int64_t r0) {
    constexpr int kR = decltype(R)::value;
    int64_t vmin = vis[r0];
    for (int t = 1; t < kR; ++t) vmin = std::min(vmin, vis[r0 + t]);
    for (int64_t p = 0; p < npanels; ++p) {
      VI a[kR][kVP];
      scan_panel<kR>(q + r0 * ldq, ldq, kb + p * R4 * 64, R4, a);
      uint32_t m = 0;
      if ((p + 1) * kPanel <= vmin) {  // every row sees the whole panel: OR the masks, one extraction
        for (int64_t v = 0; v < kVP; ++v) {
          auto any = hn::Gt(a[0][v], hn::Set(di, thr[r0]));
          for (int t = 1; t < kR; ++t) any = hn::Or(any, hn::Gt(a[t][v], hn::Set(di, thr[r0 + t])));
          m |= static_cast<uint32_t>(hn::BitsFromMask(di, any)) << (v * kN);
        }
      } else {
        for (int t = 0; t < kR; ++t)
          m |= above_bits(di, a[t], hn::Set(di, thr[r0 + t])) & lanes_below(vis[r0 + t] - p * kPanel);
      }
      bits[p] |= static_cast<uint16_t>(m);
    }
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace iceformer
HWY_AFTER_NAMESPACE();
