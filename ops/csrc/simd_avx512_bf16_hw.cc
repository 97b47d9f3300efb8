// The bfloat16 P V tile with AVX512-BF16's dot product: the only file built for that extension (-mavx512bf16);
// avx512_bf16_kernels() offers it and the dispatch point checks the CPU first.
#include "simd.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include "simd_avx512_pv_bf16.h"

namespace iceformer {
namespace avx512 {

void pv_tile_bf16_hw(const float* p, int64_t ldp, int64_t rows, int64_t cols, const uint32_t* vw, int64_t dv, float* o,
                     int64_t ldo) {
  pv_tile_t<true>(p, ldp, rows, cols, vw, dv, o, ldo);
}

}  // namespace avx512
}  // namespace iceformer

#endif
