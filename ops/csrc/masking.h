// Which keys a query may see: causal limit (bottom-right aligned), key_padding_mask, attn_mask.
#pragma once
#include <cstdint>
#include <limits>

#include "params.h"

namespace iceformer {

// Last key index query i may see: i + T - S under the causal flag (may be < 0: nothing visible), else T - 1.
inline int64_t causal_last_key(const AttentionParams& p, int64_t i) {
  const int64_t last = p.is_causal ? i + p.shape.T - p.shape.S : p.shape.T - 1;
  return last < p.shape.T - 1 ? last : p.shape.T - 1;
}

inline bool key_is_real(const KeyPaddingView& kp, int64_t T, int64_t b, int64_t j) {
  switch (kp.kind) {
    case KeyPaddingKind::kNone: return true;
    case KeyPaddingKind::kBool: return static_cast<const uint8_t*>(kp.data)[b * T + j] != 0;
    case KeyPaddingKind::kInt32: return static_cast<const int32_t*>(kp.data)[b * T + j] != 0;
    case KeyPaddingKind::kInt64: return static_cast<const int64_t*>(kp.data)[b * T + j] != 0;
  }
  return true;
}

// One query row's view of attn_mask: value(j) is the additive logit term (0, a bias, or -inf).
struct MaskRow {
  MaskKind kind = MaskKind::kNone;
  const uint8_t* b8 = nullptr;
  const float* f32 = nullptr;
  int64_t stride = 0;

  float value(int64_t j) const {
    switch (kind) {
      case MaskKind::kNone: return 0.f;
      case MaskKind::kBool: return b8[j * stride] ? 0.f : -std::numeric_limits<float>::infinity();
      case MaskKind::kFloat: return f32[j * stride];
    }
    return 0.f;
  }
};

inline MaskRow mask_row(const MaskView& m, int64_t b, int64_t h, int64_t i) {
  MaskRow r;
  r.kind = m.kind;
  r.stride = m.stride[3];
  const int64_t off = b * m.stride[0] + h * m.stride[1] + i * m.stride[2];
  if (m.kind == MaskKind::kBool) r.b8 = static_cast<const uint8_t*>(m.data) + off;
  if (m.kind == MaskKind::kFloat) r.f32 = static_cast<const float*>(m.data) + off;
  return r;
}

}  // namespace iceformer
