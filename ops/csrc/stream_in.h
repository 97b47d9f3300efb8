// Reading memory ahead of the kernels: a block in order before strided passes, or scattered rows asked for early.
#pragma once

#include <cstdint>
#include <cstring>

namespace iceformer {

// One load per 64-byte line of x[0, n), in order: the lines stream into L1 / L2 at the memory's bandwidth. The fp32
// P V tiles of the AVX2 / NEON kernels read a block of V rows in strided passes of two vectors each (dv / 16 on AVX2,
// dv / 8 on NEON), and on a cold block every pass then waited on DRAM line by line (flash decoding at 16k keys on an
// AMD Zen 3: 2x the chunk's time); software prefetches of the same lines did not help there (docs/decisions.md).
inline void stream_in(const float* x, int64_t n) {
  uint32_t acc = 0;
  for (int64_t e = 0; e < n; e += 16) {
    uint32_t bits;
    std::memcpy(&bits, x + e, sizeof bits);
    acc |= bits;
  }
  asm volatile("" : : "r"(acc));  // the loads are the point: keep them
}

// Asks for the cache lines of a row of n floats (a gathered row, several ahead of its use, so that many row
// fetches are in flight instead of one).
inline void prefetch_row(const float* row, int64_t n) {
  for (int64_t e = 0; e < n; e += 16) __builtin_prefetch(row + e);
}

}  // namespace iceformer
