// The one dispatch point: the best compiled-in variant the CPU supports. ICEFORMER_SIMD=scalar forces the reference,
// ICEFORMER_SIMD=avx512 the AVX-512 kernels without the VNNI extension (to test that variant on a VNNI CPU).
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
                                             __builtin_cpu_supports("avx512dq") &&
                                             __builtin_cpu_supports("avx512bw")) {
      const bool plain = force != nullptr && std::strcmp(force, "avx512") == 0;
      if (const Kernels* kv = avx512_vnni_kernels(); kv != nullptr && !plain && __builtin_cpu_supports("avx512vnni"))
        return kv;
      return k;
    }
#endif
    return &scalar_kernels();
  }();
  return *chosen;
}

}  // namespace iceformer
