// Shared by the Highway kernel files (simd_hwy*-inl.h): vector shapes and register budgets of the target being
// compiled (included once per offered target by simd_hwy.cc, before the kernel files; no include guard).
#include <type_traits>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace iceformer {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using DI = hn::ScalableTag<int32_t>;
using DU = hn::ScalableTag<uint32_t>;
using VF = hn::Vec<DF>;
using VI = hn::Vec<DI>;
using VU = hn::Vec<DU>;

// Lanes per vector (fixed-width targets only: simd_hwy.cc builds no scalable one) and vectors per 16-key panel.
constexpr int64_t kN = static_cast<int64_t>(hn::MaxLanes(DF()));
constexpr int64_t kVP = kPanel / kN;
static_assert(kPanel % kN == 0, "a 16-key panel is a whole number of vectors");
// Vector registers of the target: 32 on AVX-512 and ARM64, 16 on SSE / AVX2.
#if HWY_ARCH_ARM || HWY_TARGET <= HWY_AVX3
constexpr int kRegs = 32;
#else
constexpr int kRegs = 16;
#endif

// Rows per register-blocked group when each row keeps `per_row` accumulators and `shared` registers hold the
// operands loaded for all rows (at most 8 rows).
constexpr int rows_for(int per_row, int shared) {
  return (kRegs - shared) / per_row < 1 ? 1 : ((kRegs - shared) / per_row > 8 ? 8 : (kRegs - shared) / per_row);
}

// f(std::integral_constant<int, r>, row0) over groups of Rmax rows, then one group of the remainder.
template <int R, class F>
HWY_INLINE void row_group_tail(int64_t left, int64_t row0, const F& f) {
  if constexpr (R > 0) {
    if (left == R)
      f(std::integral_constant<int, R>{}, row0);
    else
      row_group_tail<R - 1>(left, row0, f);
  }
}

template <int Rmax, class F>
HWY_INLINE void by_row_groups(int64_t rows, const F& f) {
  int64_t r = 0;
  for (; r + Rmax <= rows; r += Rmax) f(std::integral_constant<int, Rmax>{}, r);
  row_group_tail<Rmax - 1>(rows - r, r, f);
}

// Lanes [0, n) of a vector at p, the rest 0 (no access past them); kFull: all of them.
template <bool kFull, class D>
HWY_INLINE hn::Vec<D> load_part(D d, const hn::TFromD<D>* p, int64_t n) {
  if constexpr (kFull) return hn::LoadU(d, p);
  return hn::LoadN(d, p, static_cast<size_t>(n < 0 ? 0 : n));
}

template <bool kFull, class D>
HWY_INLINE void store_part(hn::Vec<D> v, D d, hn::TFromD<D>* p, int64_t n) {
  if constexpr (kFull)
    hn::StoreU(v, d, p);
  else
    hn::StoreN(v, d, p, static_cast<size_t>(n < 0 ? 0 : n));
}

// bfloat16 bits of each lane in its low half: round to nearest even, NaN kept quiet (bf16.h).
HWY_INLINE VU bf16_bits(VF x) {
  const DU du;
  const VU b = hn::BitCast(du, x);
  const VU r =
      hn::ShiftRight<16>(hn::Add(b, hn::Add(hn::And(hn::ShiftRight<16>(b), hn::Set(du, 1u)), hn::Set(du, 0x7fffu))));
  const VU q = hn::ShiftRight<16>(hn::Or(b, hn::Set(du, 0x400000u)));
  return hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(x)), q, r);
}

// The fp32 values of the bfloat16 roundings of lanes [0, n) of x (0 in the others).
HWY_INLINE VF bf16_round(const float* x, int64_t n) {
  const DF df;
  return hn::BitCast(df, hn::ShiftLeft<16>(bf16_bits(load_part<false>(df, x, n))));
}

}  // namespace HWY_NAMESPACE
}  // namespace iceformer
HWY_AFTER_NAMESPACE();
