// bfloat16: the top 16 bits of a float32. Rounding is to nearest, ties to even (what AVX512-BF16's conversions do);
// NaN stays a (quiet) NaN, overflow rounds to infinity.
#pragma once
#include <cstdint>
#include <cstring>

namespace iceformer {

inline uint16_t to_bf16(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((b | 0x00400000u) >> 16);  // NaN
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

inline float from_bf16(uint32_t h) {
  const uint32_t b = (h & 0xffffu) << 16;
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

// A pair word: bf16(a) in the low half, bf16(b) in the high half (the operand layout of AVX512-BF16's dot product).
inline uint32_t bf16_pair(float a, float b) {
  return static_cast<uint32_t>(to_bf16(a)) | static_cast<uint32_t>(to_bf16(b)) << 16;
}

}  // namespace iceformer
