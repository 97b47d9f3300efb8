// Which keys a query may see: causal limit (bottom-right aligned), key_padding_mask, attn_mask.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "params.h"

namespace iceformer {

// Position of query row i of batch row b: i + T - S (bottom-right aligned), or i + q_offset[b] when the caller
// gives per-batch offsets (a KV cache whose rows hold different lengths).
inline int64_t query_position(const AttentionParams& p, int64_t b, int64_t i) {
  return i + (p.q_offset != nullptr ? p.q_offset[b] : p.shape.T - p.shape.S);
}

// Last key index query i may see: its position under the causal flag (may be < 0: nothing visible), else T - 1.
inline int64_t causal_last_key(const AttentionParams& p, int64_t b, int64_t i) {
  const int64_t last = p.is_causal ? query_position(p, b, i) : p.shape.T - 1;
  return last < p.shape.T - 1 ? last : p.shape.T - 1;
}

// First key query i may see: i + T - S - window + 1 under a hard window (local_window_size), else 0. Keys before
// it are never attended, on any path.
inline int64_t row_first(const AttentionParams& p, int64_t b, int64_t i) {
  if (p.window < 0) return 0;
  const int64_t first = query_position(p, b, i) - p.window + 1;
  return first > 0 ? first : 0;
}

// Keys in [first, last]: how many positions a row spans (0 when its window ends before it starts).
inline int64_t visible_span(int64_t first, int64_t last) { return last >= first ? last + 1 - first : 0; }

// Logit soft-capping (Gemma 2, GroupQueryAttention's softcap): s -> cap * tanh(s / cap), before any mask.
inline void apply_softcap(float* s, int64_t n, float cap) {
  for (int64_t c = 0; c < n; ++c) s[c] = cap * std::tanh(s[c] / cap);
}

// Values at or below this count as masked: exporters fill with the float minimum rather than -inf.
constexpr float kMaskedBelow = -1e30f;

// The "no mask" placeholder (contract.NO_MASK_VALUE): a float attn_mask of exactly one 0.0, which the rewriter passes
// so that the reference function always sees all five inputs.
inline bool is_no_mask(bool is_float, int64_t elements, const void* data) {
  return is_float && elements == 1 && *static_cast<const float*>(data) == 0.f;
}
// The logit of a key a query may not see (exp gives exactly 0; every path's home for it).
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Last key query row i of (b, h) may see: the causal limit, tightened by the mask's last visible key.
inline int64_t row_last(const AttentionParams& p, int64_t b, int64_t h, int64_t i) {
  const int64_t last = causal_last_key(p, b, i);
  if (p.mask_last == nullptr) return last;
  const int64_t hh = p.mask.stride[1] ? h : 0;
  const int64_t m = p.mask_last[(b * p.shape.Hq + hh) * p.shape.S + i];
  return m < last ? m : last;
}

inline bool key_is_real(const KeyPaddingView& kp, int64_t T, int64_t b, int64_t j) {
  switch (kp.kind) {
    case KeyPaddingKind::kNone:
      return true;
    case KeyPaddingKind::kBool:
      return static_cast<const uint8_t*>(kp.data)[b * T + j] != 0;
    case KeyPaddingKind::kInt32:
      return static_cast<const int32_t*>(kp.data)[b * T + j] != 0;
    case KeyPaddingKind::kInt64:
      return static_cast<const int64_t*>(kp.data)[b * T + j] != 0;
    case KeyPaddingKind::kLength:
      return j < static_cast<const int64_t*>(kp.data)[b];
  }
  return true;
}

// One query row's view of attn_mask: value(j) is the additive logit term (0, a bias, or -inf).
struct MaskRow {
  MaskDtype kind = MaskDtype::kNone;
  const uint8_t* b8 = nullptr;
  const float* f32 = nullptr;
  int64_t stride = 0;

  float value(int64_t j) const {
    switch (kind) {
      case MaskDtype::kNone:
        return 0.f;
      case MaskDtype::kBool:
        return b8[j * stride] ? 0.f : kNegInf;
      case MaskDtype::kFloat: {
        const float v = f32[j * stride];
        return v <= kMaskedBelow ? kNegInf : v;
      }
    }
    return 0.f;
  }
};

// A logit with a mask term added. A key masked by either side (-inf) stays -inf, whatever the other side holds
// (+inf or NaN logits from inf keys, NaN mask entries outside a window), so an invisible key never turns its row
// into NaN. Equal to s + m for every other input.
inline float add_mask(float s, float m) { return (m == kNegInf || s == kNegInf) ? kNegInf : s + m; }

inline MaskRow mask_row(const MaskView& m, int64_t b, int64_t h, int64_t i) {
  MaskRow r;
  r.kind = m.kind;
  r.stride = m.stride[3];
  const int64_t off = b * m.stride[0] + h * m.stride[1] + i * m.stride[2];
  if (m.kind == MaskDtype::kBool) r.b8 = static_cast<const uint8_t*>(m.data) + off;
  if (m.kind == MaskDtype::kFloat) r.f32 = static_cast<const float*>(m.data) + off;
  return r;
}

}  // namespace iceformer
