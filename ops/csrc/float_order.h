// The order-preserving map between float and uint32: a < b (floats, no NaN) <=> ordered_key(a) < ordered_key(b).
// Radix sorts (the DCI lists) and bisections over values (top-k thresholds) work on the integer image.
#pragma once
#include <cstdint>
#include <cstring>

namespace iceformer {

inline uint32_t ordered_key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline float ordered_float(uint32_t u) {
  u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace iceformer
