// The one dispatch point: the best compiled-in variant the CPU supports, unless ICEFORMER_SIMD=scalar.
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
                                             __builtin_cpu_supports("avx512bw"))
      return k;
#endif
    return &scalar_kernels();
  }();
  return *chosen;
}

}  // namespace iceformer
