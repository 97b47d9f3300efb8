// Rotary position embedding (RoPE) of one head row, as GroupQueryAttention applies it with do_rotary = 1.
// cos / sin: the caches [rows, R/2] at the token's position, R = rotary dims (<= D; dims past R are unchanged).
// Half layout (rotary_interleaved = 0): x_i and x_{i+R/2} form pair i. Interleaved: x_{2i} and x_{2i+1}.
// Each pair (a, b) becomes (a cos_i - b sin_i, b cos_i + a sin_i).
#pragma once
#include <cstdint>

namespace iceformer {

inline void rotate_row(const float* x, float* out, int64_t D, int64_t half, const float* cos, const float* sin,
                       bool interleaved) {
  for (int64_t d = 2 * half; d < D; ++d) out[d] = x[d];
  for (int64_t i = 0; i < half; ++i) {
    const int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
    const float a = x[ia], b = x[ib];
    out[ia] = a * cos[i] - b * sin[i];
    out[ib] = b * cos[i] + a * sin[i];
  }
}

}  // namespace iceformer
