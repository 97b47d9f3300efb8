// Highway kernels of the row-level helpers (simd.h contracts): max, exp and sum, dot, scale, counts and the k-th
// largest integer score, gathered dot products and axpys, the key-panel transpose and the bfloat16 pair words.
// Included once per offered target by simd_hwy.cc (no include guard).
HWY_BEFORE_NAMESPACE();
namespace iceformer {
namespace HWY_NAMESPACE {

// Lanes [0, n) of x, `fill` in the others (no access past n).
HWY_INLINE VF load_or(const float* x, int64_t n, float fill) {
  const DF df;
  return n >= kN ? hn::LoadU(df, x)
                 : hn::IfThenElse(hn::FirstN(df, static_cast<size_t>(n)), hn::LoadN(df, x, n), hn::Set(df, fill));
}

float Max(const float* x, int64_t n) {
  const DF df;
  const float ninf = -std::numeric_limits<float>::infinity();
  VF m = hn::Set(df, ninf);
  auto nan = hn::MaskFalse(df);
  for (int64_t i = 0; i < n; i += kN) {
    const VF a = load_or(x + i, n - i, ninf);
    nan = hn::Or(nan, hn::IsNaN(a));
    m = hn::Max(m, a);
  }
  if (!hn::AllFalse(df, nan)) return std::numeric_limits<float>::quiet_NaN();
  return hn::ReduceMax(df, m);
}

// exp(x): x = n ln2 + r, |r| <= ln2/2, exp(r) by the degree-6 Taylor polynomial of the AVX-512 kernel (rel. error
// ~1e-7); 2^n as two exponent-field powers 2^(n/2) 2^(n - n/2) (n up to 128 after the clamp). Inputs below -87.3 give
// exactly 0 (so -inf -> 0). NaN propagates: the offered targets' Min / Max return their second operand for NaN
// (x86's minps / maxps; NEON's fmin / fmax propagate it), so p is NaN, whatever the scale made of it.
HWY_INLINE VF exp_approx(VF x) {
  const DF df;
  const DI di;
  const VF lo = hn::Set(df, -87.3f), hi = hn::Set(df, 88.7f);
  const auto zero = hn::Lt(x, lo);  // false for NaN
  const VF xc = hn::Min(hi, hn::Max(lo, x));
  const VF n = hn::Round(hn::Mul(xc, hn::Set(df, 1.44269504088896341f)));
  VF r = hn::NegMulAdd(n, hn::Set(df, 0.693145751953125f), xc);
  r = hn::NegMulAdd(n, hn::Set(df, 1.428606765330187045e-06f), r);
  VF p = hn::Set(df, 1.f / 720.f);
  p = hn::MulAdd(p, r, hn::Set(df, 1.f / 120.f));
  p = hn::MulAdd(p, r, hn::Set(df, 1.f / 24.f));
  p = hn::MulAdd(p, r, hn::Set(df, 1.f / 6.f));
  p = hn::MulAdd(p, r, hn::Set(df, 0.5f));
  p = hn::MulAdd(p, r, hn::Set(df, 1.f));
  p = hn::MulAdd(p, r, hn::Set(df, 1.f));
  const VI ni = hn::ConvertTo(di, n);
  const VI n1 = hn::ShiftRight<1>(ni), n2 = hn::Sub(ni, n1);
  const VF s1 = hn::BitCast(df, hn::ShiftLeft<23>(hn::Add(n1, hn::Set(di, 127))));
  const VF s2 = hn::BitCast(df, hn::ShiftLeft<23>(hn::Add(n2, hn::Set(di, 127))));
  return hn::IfThenZeroElse(zero, hn::Mul(hn::Mul(p, s1), s2));
}

float ExpSum(float* x, int64_t n, float m) {
  const DF df;
  const VF vm = hn::Set(df, m);
  VF acc = hn::Zero(df);
  int64_t i = 0;
  for (; i + kN <= n; i += kN) {
    const VF e = exp_approx(hn::Sub(hn::LoadU(df, x + i), vm));
    hn::StoreU(e, df, x + i);
    acc = hn::Add(acc, e);
  }
  if (i < n) {
    const VF e = hn::IfThenElseZero(hn::FirstN(df, n - i), exp_approx(hn::Sub(hn::LoadN(df, x + i, n - i), vm)));
    hn::StoreN(e, df, x + i, n - i);
    acc = hn::Add(acc, e);
  }
  return hn::ReduceSum(df, acc);
}

float Dot(const float* a, const float* b, int64_t n) {
  const DF df;
  VF acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * kN <= n; i += 2 * kN) {
    acc0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc0);
    acc1 = hn::MulAdd(hn::LoadU(df, a + i + kN), hn::LoadU(df, b + i + kN), acc1);
  }
  for (; i < n; i += kN)
    acc0 = hn::MulAdd(load_part<false>(df, a + i, n - i), load_part<false>(df, b + i, n - i), acc0);
  return hn::ReduceSum(df, hn::Add(acc0, acc1));
}

void Scal(float a, float* x, int64_t n) {
  const DF df;
  const VF va = hn::Set(df, a);
  int64_t i = 0;
  for (; i + kN <= n; i += kN) hn::StoreU(hn::Mul(va, hn::LoadU(df, x + i)), df, x + i);
  if (i < n) hn::StoreN(hn::Mul(va, hn::LoadN(df, x + i, n - i)), df, x + i, n - i);
}

int64_t CountGe(const float* x, int64_t n, float thr) {
  const DF df;
  const VF vt = hn::Set(df, thr);
  int64_t m = 0;
  int64_t i = 0;
  for (; i + kN <= n; i += kN) m += static_cast<int64_t>(hn::CountTrue(df, hn::Ge(hn::LoadU(df, x + i), vt)));
  if (i < n)
    m += static_cast<int64_t>(
        hn::CountTrue(df, hn::And(hn::FirstN(df, n - i), hn::Ge(hn::LoadN(df, x + i, n - i), vt))));
  return m;
}

// kth_bisect.h's bisection over x[0, n) with this target's count.
HWY_INLINE int32_t bisect_int(const float* x, int64_t n, int64_t k, int32_t lo, int32_t hi) {
  return iceformer::bisect_int([=](int32_t t) { return CountGe(x, n, static_cast<float>(t)); }, k, lo, hi);
}

// Two levels as in the AVX-512 kernel: the lane maxima of G = ceil(k / kN) runs of >= 2 vectors are kN G distinct
// elements, so their k-th largest m bounds the answer from below; the elements >= m are compacted to the front of v
// and the bisection runs over them from m.
float KthLargestInt(float* v, int64_t n, int64_t k) {
  const DF df;
  const int64_t nvec = (n + kN - 1) / kN, groups = (k + kN - 1) / kN;
  const int32_t hi = static_cast<int32_t>(Max(v, n));
  if (groups * kN > 256 || 2 * groups > nvec) return static_cast<float>(bisect_int(v, n, k, -(1 << 24), hi));
  const float none = -33554432.f;  // -2^25: below every value, so never a false maximum
  HWY_ALIGN float maxima[256];
  VF low = hn::Set(df, std::numeric_limits<float>::infinity());
  for (int64_t g = 0; g < groups; ++g) {
    VF m = hn::Set(df, none);
    for (int64_t i = g * nvec / groups; i < (g + 1) * nvec / groups; ++i)
      m = hn::Max(m, load_or(v + kN * i, n - kN * i, none));
    hn::Store(m, df, maxima + kN * g);
    low = hn::Min(low, m);
  }
  const int32_t m = bisect_int(maxima, kN * groups, k, static_cast<int32_t>(hn::ReduceMin(df, low)), hi);
  // Compact in place: the write position never passes the vector just read, and only kept lanes are written.
  const VF vm = hn::Set(df, static_cast<float>(m));
  int64_t c = 0;
  for (int64_t i = 0; i < n; i += kN) {
    const size_t left = static_cast<size_t>(std::min<int64_t>(kN, n - i));
    const VF x = hn::LoadN(df, v + i, left);
    c += static_cast<int64_t>(hn::CompressBlendedStore(x, hn::And(hn::FirstN(df, left), hn::Ge(x, vm)), df, v + c));
  }
  return static_cast<float>(bisect_int(v, c, k, m, hi));
}

// q in registers (chunks of 8 vectors), four gathered rows per pass over it.
void GatherDot(const float* q, const float* rows, int64_t ld, const int32_t* ids, int64_t n, int64_t D, float scale,
               float* out) {
  const DF df;
  constexpr int64_t kC = 8 * kN;
  for (int64_t t = 0; t < n; ++t) out[t] = 0.f;
  for (int64_t d0 = 0; d0 < D; d0 += kC) {
    const int64_t len = std::min(kC, D - d0), nv = (len + kN - 1) / kN;
    VF qv[8];
    for (int64_t c = 0; c < nv; ++c) qv[c] = load_part<false>(df, q + d0 + c * kN, len - c * kN);
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
      VF a[4] = {hn::Zero(df), hn::Zero(df), hn::Zero(df), hn::Zero(df)};
      for (int j = 0; j < 4; ++j) {
        const float* r = rows + static_cast<int64_t>(ids[t + j]) * ld + d0;
        for (int64_t c = 0; c < nv; ++c) a[j] = hn::MulAdd(qv[c], load_part<false>(df, r + c * kN, len - c * kN), a[j]);
      }
      for (int j = 0; j < 4; ++j) out[t + j] += hn::ReduceSum(df, a[j]);
    }
    for (; t < n; ++t) {
      const float* r = rows + static_cast<int64_t>(ids[t]) * ld + d0;
      VF a = hn::Zero(df);
      for (int64_t c = 0; c < nv; ++c) a = hn::MulAdd(qv[c], load_part<false>(df, r + c * kN, len - c * kN), a);
      out[t] += hn::ReduceSum(df, a);
    }
  }
  for (int64_t t = 0; t < n; ++t) out[t] *= scale;
}

// acc in registers (chunks of 8 vectors) over all n rows.
void GatherAxpy(const float* w, const float* rows, int64_t ld, const int32_t* ids, int64_t n, int64_t dv, float* acc) {
  const DF df;
  constexpr int64_t kC = 8 * kN;
  for (int64_t e0 = 0; e0 < dv; e0 += kC) {
    const int64_t len = std::min(kC, dv - e0), nv = (len + kN - 1) / kN;
    VF a[8];
    for (int64_t c = 0; c < nv; ++c) a[c] = load_part<false>(df, acc + e0 + c * kN, len - c * kN);
    for (int64_t t = 0; t < n; ++t) {
      if (w[t] == 0.f) continue;
      const VF wt = hn::Set(df, w[t]);
      const float* r = rows + static_cast<int64_t>(ids[t]) * ld + e0;
      for (int64_t c = 0; c < nv; ++c) a[c] = hn::MulAdd(wt, load_part<false>(df, r + c * kN, len - c * kN), a[c]);
    }
    for (int64_t c = 0; c < nv; ++c) store_part<false>(a[c], df, acc + e0 + c * kN, len - c * kN);
  }
}

// 4 x 4 transposes in 128-bit vectors (every fixed-width target has them): rows c0..c0+3, dims d..d+3 in, the panel's
// columns d..d+3 (4 rows each) out.
void PackPanel(const float* const* rows, int64_t m, int64_t D, float* panel) {
  const hn::Full128<float> d4;
  const float zero[4] = {0.f, 0.f, 0.f, 0.f};
  const int64_t D4 = D - D % 4;
  for (int64_t c0 = 0; c0 < kPanel; c0 += 4) {
    const float* r[4];
    for (int j = 0; j < 4; ++j) r[j] = c0 + j < m ? rows[c0 + j] : nullptr;
    for (int64_t d = 0; d < D4; d += 4) {
      const auto x0 = hn::LoadU(d4, r[0] ? r[0] + d : zero), x1 = hn::LoadU(d4, r[1] ? r[1] + d : zero);
      const auto x2 = hn::LoadU(d4, r[2] ? r[2] + d : zero), x3 = hn::LoadU(d4, r[3] ? r[3] + d : zero);
      const auto t0 = hn::InterleaveLower(d4, x0, x2), t1 = hn::InterleaveLower(d4, x1, x3);
      const auto t2 = hn::InterleaveUpper(d4, x0, x2), t3 = hn::InterleaveUpper(d4, x1, x3);
      hn::StoreU(hn::InterleaveLower(d4, t0, t1), d4, panel + d * kPanel + c0);
      hn::StoreU(hn::InterleaveUpper(d4, t0, t1), d4, panel + (d + 1) * kPanel + c0);
      hn::StoreU(hn::InterleaveLower(d4, t2, t3), d4, panel + (d + 2) * kPanel + c0);
      hn::StoreU(hn::InterleaveUpper(d4, t2, t3), d4, panel + (d + 3) * kPanel + c0);
    }
    for (int64_t d = D4; d < D; ++d)
      for (int j = 0; j < 4; ++j) panel[d * kPanel + c0 + j] = r[j] ? r[j][d] : 0.f;
  }
}

void ToPairs(const float* a, const float* b, int64_t n, uint32_t* out) {
  const DF df;
  const DU du;
  for (int64_t i = 0; i < n; i += kN) {
    const size_t left = static_cast<size_t>(std::min<int64_t>(kN, n - i));
    const VU lo = bf16_bits(hn::LoadN(df, a + i, left));
    const VU hi = b != nullptr ? bf16_bits(hn::LoadN(df, b + i, left)) : hn::Zero(du);
    hn::StoreN(hn::Or(lo, hn::ShiftLeft<16>(hi)), du, out + i, left);
  }
}

void Repair(const uint32_t* a, int ha, const uint32_t* b, int hb, int64_t n, uint32_t* out) {
  const DU du;
  const VU low = hn::Set(du, 0xffffu);
  for (int64_t i = 0; i < n; i += kN) {
    const size_t left = static_cast<size_t>(std::min<int64_t>(kN, n - i));
    const VU x = hn::And(hn::ShiftRightSame(hn::LoadN(du, a + i, left), 16 * ha), low);
    const VU y = b != nullptr ? hn::ShiftRightSame(hn::LoadN(du, b + i, left), 16 * hb) : hn::Zero(du);
    hn::StoreN(hn::Or(x, hn::ShiftLeft<16>(y)), du, out + i, left);
  }
}

// row_hash (simd.h) in vectors of at most 8 lanes (one on AVX2 and AVX-512, two on NEON): each lane is one of the
// eight sums, so nothing is folded and every target runs the same code.
uint64_t RowHash(const float* x, int64_t n) {
  const hn::CappedTag<uint32_t, 8> du;
  const hn::CappedTag<float, 8> df;
  using V = hn::Vec<decltype(du)>;
  constexpr int64_t kL = static_cast<int64_t>(hn::MaxLanes(du)), kV = 8 / kL;
  const V one = hn::Set(du, 1u), step = hn::Set(du, 16u * kRowHashMul);  // c_{d+8} = c_d + 16 kRowHashMul
  V acc[kV], c[kV];
  for (int64_t v = 0; v < kV; ++v) {
    acc[v] = hn::Zero(du);
    c[v] =
        hn::Mul(hn::Add(hn::ShiftLeft<1>(hn::Iota(du, static_cast<uint32_t>(v * kL))), one), hn::Set(du, kRowHashMul));
  }
  int64_t d = 0;
  for (; d + 8 <= n; d += 8)
    for (int64_t v = 0; v < kV; ++v) {
      const V w = hn::BitCast(du, hn::LoadU(df, x + d + v * kL));
      acc[v] = hn::Add(acc[v], hn::Mul(hn::Add(w, one), c[v]));
      c[v] = hn::Add(c[v], step);
    }
  uint32_t lanes[8];
  for (int64_t v = 0; v < kV; ++v) hn::StoreU(acc[v], du, lanes + v * kL);
  for (; d < n; ++d) lanes[d % 8] += row_hash_term(x[d], d);
  return row_hash_finish(lanes, n);
}

}  // namespace HWY_NAMESPACE
}  // namespace iceformer
HWY_AFTER_NAMESPACE();
