// The low-rank scan with AVX512-VNNI's dot product: the only file built for that extension (-mavx512vnni);
// avx512_vnni_kernels() offers these and the dispatch point checks the CPU first.
#include "simd.h"

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include "simd_avx512_i8.h"

namespace iceformer {
namespace avx512 {

void qk_above_i8_vnni(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                      const int64_t* vis, const float* thr, int32_t* idx, float* val, int64_t cap, int64_t* count) {
  qki_above<true>(q, ldq, rows, kb, R4, npanels, FilterSink{vis, thr, idx, val, cap, count});
}

void qk_union_i8_vnni(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                      const int64_t* vis, const int32_t* thr, uint16_t* bits) {
  qki_union<true>(q, ldq, rows, kb, R4, npanels, vis, thr, bits);
}

}  // namespace avx512
}  // namespace iceformer

#endif
