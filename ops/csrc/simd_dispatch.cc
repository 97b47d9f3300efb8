// The one dispatch point: the best compiled-in variant the CPU supports. ICEFORMER_SIMD=scalar forces the reference,
// ICEFORMER_SIMD=avx512 the AVX-512 kernels without the VNNI and BF16 extensions (to test that variant on a CPU
// that has them).
#include <cstdlib>
#include <cstring>

#include "simd.h"

namespace iceformer {

const Kernels& kernels() {
  static const Kernels* chosen = [] {
    const char* force = std::getenv("ICEFORMER_SIMD");
    if (force != nullptr && std::strcmp(force, "scalar") == 0) return &scalar_kernels();
#if defined(__x86_64__) || defined(_M_X64)
    if (const Kernels* k = avx512_kernels(); k != nullptr && __builtin_cpu_supports("avx512f") &&
                                             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw")) {
      const bool plain = force != nullptr && std::strcmp(force, "avx512") == 0;
      if (const Kernels* kv = avx512_vnni_kernels(); kv != nullptr && !plain && __builtin_cpu_supports("avx512vnni")) {
        if (const Kernels* kb = avx512_bf16_kernels(); kb != nullptr && __builtin_cpu_supports("avx512bf16")) return kb;
        return kv;
      }
      return k;
    }
#endif
    return &scalar_kernels();
  }();
  return *chosen;
}

}  // namespace iceformer
