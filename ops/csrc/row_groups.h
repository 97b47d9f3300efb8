// Register blocking over query rows, shared by the hand-written kernel files (AVX-512, AVX-VNNI; the Highway files
// have their own by_row_groups in simd_hwy_common-inl.h, inside Highway's per-target regions, and share only
// clamped_rows, which holds no SIMD code).
#pragma once
#include <cstdint>
#include <type_traits>

namespace iceformer {
// Internal linkage: every kernel file gets its own copy, built with that file's target flags.
namespace {

// f(std::integral_constant<int, r>, row0) for one group of r = left rows (1 <= left < R + 1), else nothing.
template <int R, class F>
inline __attribute__((always_inline)) void row_group_tail(int64_t left, int64_t row0, const F& f) {
  if constexpr (R > 0) {
    if (left == R)
      f(std::integral_constant<int, R>{}, row0);
    else
      row_group_tail<R - 1>(left, row0, f);
  }
}

// Calls f(std::integral_constant<int, R>, row0) over rows in groups of R = Rmax (then one group of the remainder):
// the register-blocked kernels keep R rows' accumulators in registers.
template <int Rmax, class F>
inline __attribute__((always_inline)) void by_row_groups(int64_t rows, const F& f) {
  int64_t r = 0;
  for (; r + Rmax <= rows; r += Rmax) f(std::integral_constant<int, Rmax>{}, r);
  row_group_tail<Rmax - 1>(rows - r, r, f);
}

// Pointers to rows r0 .. r0 + N - 1 of a row-major array of `rows` rows (leading dimension ld); rows past the last
// repeat it, so a register block of N rows always reads valid memory. Returns how many are real.
template <int N>
inline __attribute__((always_inline)) int64_t clamped_rows(const float* a, int64_t ld, int64_t rows, int64_t r0,
                                                           const float** out) {
  for (int r = 0; r < N; ++r) out[r] = a + (r0 + r < rows ? r0 + r : rows - 1) * ld;
  return rows - r0 < N ? rows - r0 : N;
}

}  // namespace
}  // namespace iceformer
