// The Highway kernel tables: one source (simd_hwy_*-inl.h) built for each fixed-width target by Highway's
// foreach_target (per-function target attributes, so the rest of the library stays at the baseline ISA). Offered:
// AVX2 + FMA (x86-64-v3), AVX-512 (Highway's build, to compare with the hand-written kernels) and ARM64 NEON. The
// dispatch point (simd_dispatch.cc) checks the CPU before choosing one; no Highway library is linked.
#include <algorithm>
#include <cstdint>
#include <limits>

#include "bf16.h"
#include "kth_bisect.h"
#include "row_groups.h"
#include "simd.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd_hwy.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#if HWY_MAJOR < 1 || (HWY_MAJOR == 1 && HWY_MINOR < 2)
#error "iceformer needs Highway >= 1.2 (LoadN, BitsFromMask)"
#endif

// The targets given a kernel table; the other targets foreach_target visits compile to nothing.
#define ICE_HWY_OFFERED(t) ((t) == HWY_AVX2 || (t) == HWY_AVX3 || (t) == HWY_NEON_WITHOUT_AES)

#if ICE_HWY_OFFERED(HWY_TARGET)
#include "simd_hwy_common-inl.h"
#include "simd_hwy_scan-inl.h"
#include "simd_hwy_tiles-inl.h"
#include "simd_hwy_vec-inl.h"

HWY_BEFORE_NAMESPACE();
namespace iceformer {
namespace HWY_NAMESPACE {

const Kernels* Table() {
  static const Kernels k{HWY_TARGET == HWY_AVX2   ? "avx2"
                         : HWY_TARGET == HWY_AVX3 ? "avx512-hwy"
                                                  : "neon",
                         QkTile,
                         QkKeys,
                         QkAboveI8,
                         QkUnionI8,
                         PvTile,
                         Max,
                         ExpSum,
                         Dot,
                         Scal,
                         CountGe,
                         KthLargestInt,
                         GatherDot,
                         GatherAxpy,
                         PackPanel,
                         ToPairs,
                         Repair,
                         PvTileBf16,
                         RowHash,
                         false};
  return &k;
}

}  // namespace HWY_NAMESPACE
}  // namespace iceformer
HWY_AFTER_NAMESPACE();
#endif

#if HWY_ONCE
namespace iceformer {

const Kernels* avx2_kernels() {
#if (HWY_TARGETS & HWY_AVX2) != 0
  return N_AVX2::Table();
#else
  return nullptr;
#endif
}

const Kernels* avx512_hwy_kernels() {
#if (HWY_TARGETS & HWY_AVX3) != 0
  return N_AVX3::Table();
#else
  return nullptr;
#endif
}

const Kernels* neon_kernels() {
#if (HWY_TARGETS & HWY_NEON_WITHOUT_AES) != 0
  return N_NEON_WITHOUT_AES::Table();
#else
  return nullptr;
#endif
}

}  // namespace iceformer
#endif
