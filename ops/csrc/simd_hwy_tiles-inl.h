// Highway kernels of the exact tiles (simd.h contracts): Q K^T over key panels and over keys in place, fp32 P V and
// bfloat16 P V.
// Register-blocked like the AVX-512 kernels: each row group keeps its accumulators in registers over the whole
// reduction. Included once per offered target by simd_hwy.cc (no include guard).
HWY_BEFORE_NAMESPACE();
namespace iceformer {
namespace HWY_NAMESPACE {

// Panels per step: two when a panel is one vector (AVX-512), else one.
constexpr int64_t kQkPanels = kVP == 1 ? 2 : 1;
constexpr int kQkRows = rows_for(static_cast<int>(kQkPanels * kVP), static_cast<int>(kQkPanels* kVP) + 1);

// s[r][16p + c] for R rows (from row0) and NP panels from p0: D-long FMA chains on R x NP x kVP accumulators.
template <int R, int64_t NP>
HWY_INLINE void qk_rows(const float* q, int64_t ldq, const float* kp, int64_t D, int64_t p0, float* s, int64_t lds) {
  const DF df;
  VF a[R][NP * kVP];
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < NP * kVP; ++j) a[r][j] = hn::Zero(df);
  const float* k0 = kp + p0 * D * kPanel;
  for (int64_t d = 0; d < D; ++d) {
    VF x[NP * kVP];
    for (int64_t i = 0; i < NP; ++i)
      for (int64_t v = 0; v < kVP; ++v) x[i * kVP + v] = hn::LoadU(df, k0 + (i * D + d) * kPanel + v * kN);
    for (int r = 0; r < R; ++r) {
      const VF b = hn::Set(df, q[r * ldq + d]);
      for (int64_t j = 0; j < NP * kVP; ++j) a[r][j] = hn::MulAdd(b, x[j], a[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < NP * kVP; ++j) hn::StoreU(a[r][j], df, s + r * lds + p0 * kPanel + j * kN);
}

void QkTile(const float* q, int64_t ldq, int64_t rows, const float* kp, int64_t D, int64_t npanels, float* s,
            int64_t lds) {
  by_row_groups<kQkRows>(rows, [&](auto R, int64_t r) {
    constexpr int kR = decltype(R)::value;
    int64_t p = 0;
    for (; p + kQkPanels <= npanels; p += kQkPanels)
      qk_rows<kR, kQkPanels>(q + r * ldq, ldq, kp, D, p, s + r * lds, lds);
    for (; p < npanels; ++p) qk_rows<kR, 1>(q + r * ldq, ldq, kp, D, p, s + r * lds, lds);
  });
}

// Keys read in place (QkKeys): R rows x 4 keys per block, a D-long FMA chain per (row, key) and one horizontal sum
// each at the end (no panel copy); R = 4 where 32 registers hold the 16 accumulators, else 2.
constexpr int kKeysRows = kRegs >= 32 ? 4 : 2, kKeysCols = 4;

// The sum of a vector's 128-bit blocks, lane by lane.
template <class D>
HWY_INLINE hn::Vec<hn::Full128<float>> fold_blocks(D d, hn::Vec<D> v) {
  if constexpr (hn::MaxLanes(D()) <= 4) {
    (void)d;
    return v;
  } else {
    const hn::Half<D> dh;
    return fold_blocks(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)));
  }
}

template <int R, bool kFull>
HWY_INLINE void qk_keys_step(const float* const* q, const float* const* k, int64_t d, int64_t D,
                             VF (&a)[R][kKeysCols]) {
  const DF df;
  VF x[R];
  for (int r = 0; r < R; ++r) x[r] = load_part<kFull>(df, q[r] + d, D - d);
  for (int c = 0; c < kKeysCols; ++c) {
    const VF kv = load_part<kFull>(df, k[c] + d, D - d);
    for (int r = 0; r < R; ++r) a[r][c] = hn::MulAdd(x[r], kv, a[r][c]);
  }
}

template <int R>
HWY_INLINE void qk_keys_block(const float* const* q, const float* const* k, int64_t D, int64_t nr, int64_t m, float* s,
                              int64_t lds) {
  const DF df;
  VF a[R][kKeysCols];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kKeysCols; ++c) a[r][c] = hn::Zero(df);
  // Whole vectors first, the D tail (if any) after: one loop with partial loads kept the accumulators on the stack.
  int64_t d = 0;
  for (; d + kN <= D; d += kN) qk_keys_step<R, true>(q, k, d, D, a);
  if (d < D) qk_keys_step<R, false>(q, k, d, D, a);
  const hn::Full128<float> d4;
  for (int64_t r = 0; r < nr; ++r) {
    // Each 128-bit block: [sum a0, sum a1, sum a2, sum a3] over its lanes; then the blocks added. One add tree per
    // row's 4 keys: a horizontal sum per (row, key) cost more than the dot products at D = 64.
    const VF t =
        hn::PairwiseAdd128(df, hn::PairwiseAdd128(df, a[r][0], a[r][1]), hn::PairwiseAdd128(df, a[r][2], a[r][3]));
    hn::StoreN(fold_blocks(df, t), d4, s + r * lds, static_cast<size_t>(m));
  }
}

void QkKeys(const float* q, int64_t ldq, int64_t rows, const float* k, int64_t ldk, int64_t n, int64_t D, float* s,
            int64_t lds) {
  for (int64_t r0 = 0; r0 < rows; r0 += kKeysRows) {
    const float* qr[kKeysRows];
    const int64_t nr = clamped_rows<kKeysRows>(q, ldq, rows, r0, qr);
    for (int64_t c0 = 0; c0 < n; c0 += kKeysCols) {
      const float* kc[kKeysCols];
      qk_keys_block<kKeysRows>(qr, kc, D, nr, clamped_rows<kKeysCols>(k, ldk, n, c0, kc), s + r0 * lds + c0, lds);
    }
  }
}

// Two vectors of value columns per step (e0 .. e0 + 2 kN), masked at the dv tail unless kFull.
constexpr int kPvRows = rows_for(2, 3);

template <int R, bool kFull>
HWY_INLINE void pv_chunk(const float* p, int64_t ldp, int64_t cols, const float* v, int64_t ldv, int64_t n, float* o,
                         int64_t ldo) {
  const DF df;
  VF a0[R], a1[R];
  for (int r = 0; r < R; ++r) {
    a0[r] = load_part<kFull>(df, o + r * ldo, n);
    a1[r] = load_part<kFull>(df, o + r * ldo + kN, n - kN);
  }
  for (int64_t c = 0; c < cols; ++c) {
    const VF x0 = load_part<kFull>(df, v + c * ldv, n), x1 = load_part<kFull>(df, v + c * ldv + kN, n - kN);
    for (int r = 0; r < R; ++r) {
      const VF b = hn::Set(df, p[r * ldp + c]);
      a0[r] = hn::MulAdd(b, x0, a0[r]);
      a1[r] = hn::MulAdd(b, x1, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    store_part<kFull>(a0[r], df, o + r * ldo, n);
    store_part<kFull>(a1[r], df, o + r * ldo + kN, n - kN);
  }
}

void PvTile(const float* p, int64_t ldp, int64_t rows, int64_t cols, const float* v, int64_t ldv, int64_t dv, float* o,
            int64_t ldo) {
  by_row_groups<kPvRows>(rows, [&](auto R, int64_t r) {
    constexpr int kR = decltype(R)::value;
    for (int64_t e = 0; e < dv; e += 2 * kN) {
      if (dv - e >= 2 * kN)
        pv_chunk<kR, true>(p + r * ldp, ldp, cols, v + e, ldv, 2 * kN, o + r * ldo + e, ldo);
      else
        pv_chunk<kR, false>(p + r * ldp, ldp, cols, v + e, ldv, dv - e, o + r * ldo + e, ldo);
    }
  });
}

// bfloat16 P V: weights as fp32 values of their bfloat16 roundings (hi: p[c + 1], lo: p[c] of each pair), values as
// pair words split into their two bfloat16 halves. Per pair the high product is added first, then the low one:
// each product is exact in fp32, so this is the scalar reference's arithmetic, rounding for rounding.
constexpr int kPvBf16Rows = rows_for(2, 7);  // shared: 2 x 2 value halves, 2 weights, the mask
constexpr int64_t kPvBf16Chunk = 256;        // weight columns converted per pass

template <int R, bool kFull>
HWY_INLINE void pv_bf16_chunk(const float* whi, const float* wlo, int64_t ldw, int64_t cw, const uint32_t* vw,
                              int64_t dv, int64_t n, float* o, int64_t ldo) {
  const DF df;
  const DU du;
  const VU high = hn::Set(du, 0xffff0000u);
  VF a0[R], a1[R];
  for (int r = 0; r < R; ++r) {
    a0[r] = load_part<kFull>(df, o + r * ldo, n);
    a1[r] = load_part<kFull>(df, o + r * ldo + kN, n - kN);
  }
  for (int64_t c2 = 0; c2 < cw; ++c2) {
    const VU x0 = load_part<kFull>(du, vw + c2 * dv, n), x1 = load_part<kFull>(du, vw + c2 * dv + kN, n - kN);
    const VF h0 = hn::BitCast(df, hn::And(x0, high)), l0 = hn::BitCast(df, hn::ShiftLeft<16>(x0));
    const VF h1 = hn::BitCast(df, hn::And(x1, high)), l1 = hn::BitCast(df, hn::ShiftLeft<16>(x1));
    for (int r = 0; r < R; ++r) {
      const VF bh = hn::Set(df, whi[r * ldw + c2]), bl = hn::Set(df, wlo[r * ldw + c2]);
      a0[r] = hn::MulAdd(bl, l0, hn::MulAdd(bh, h0, a0[r]));
      a1[r] = hn::MulAdd(bl, l1, hn::MulAdd(bh, h1, a1[r]));
    }
  }
  for (int r = 0; r < R; ++r) {
    store_part<kFull>(a0[r], df, o + r * ldo, n);
    store_part<kFull>(a1[r], df, o + r * ldo + kN, n - kN);
  }
}

// Row weights p[0, n) (n even) split into their pairs' rounded halves: lo[c2] = bf16(p[2 c2]), hi[c2] = bf16(p[2 c2 +
// 1]).
HWY_INLINE void split_pairs(const float* p, int64_t n, float* lo, float* hi) {
  const DF df;
  for (int64_t c = 0; c < n; c += 2 * kN) {
    const VF a = bf16_round(p + c, n - c), b = bf16_round(p + c + kN, n - c - kN);
    const int64_t m = std::min<int64_t>(kN, (n - c) / 2);
    store_part<false>(hn::ConcatEven(df, b, a), df, lo + c / 2, m);
    store_part<false>(hn::ConcatOdd(df, b, a), df, hi + c / 2, m);
  }
}

void PvTileBf16(const float* p, int64_t ldp, int64_t rows, int64_t cols, const uint32_t* vw, int64_t dv, float* o,
                int64_t ldo) {
  constexpr int64_t kW = kPvBf16Chunk / 2;
  HWY_ALIGN float whi[kPvBf16Rows * kW], wlo[kPvBf16Rows * kW];
  for (int64_t c0 = 0; c0 < cols; c0 += kPvBf16Chunk) {
    const int64_t n = std::min(kPvBf16Chunk, cols - c0);
    by_row_groups<kPvBf16Rows>(rows, [&](auto R, int64_t r) {
      constexpr int kR = decltype(R)::value;
      for (int t = 0; t < kR; ++t) split_pairs(p + (r + t) * ldp + c0, n, wlo + t * kW, whi + t * kW);
      const uint32_t* v0 = vw + (c0 / 2) * dv;
      for (int64_t e = 0; e < dv; e += 2 * kN) {
        if (dv - e >= 2 * kN)
          pv_bf16_chunk<kR, true>(whi, wlo, kW, n / 2, v0 + e, dv, 2 * kN, o + r * ldo + e, ldo);
        else
          pv_bf16_chunk<kR, false>(whi, wlo, kW, n / 2, v0 + e, dv, dv - e, o + r * ldo + e, ldo);
      }
    });
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace iceformer
HWY_AFTER_NAMESPACE();
