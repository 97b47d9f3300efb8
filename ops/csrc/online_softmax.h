// Online softmax state of one query row: {max, sum, acc} with
//   sum = sum_j w_j exp(s_j - max),  acc = sum_j w_j exp(s_j - max) v_j,  output = acc / sum.
// Shared by the exact tiles and the sinks/window band (rebase + block sums), the retrieved keys (add) and the
// tail estimate (add with weight w = the sampling step), in that order on the same state.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "simd.h"

namespace iceformer {

// Floats per accumulator row: Dv padded to whole 16-float vectors (the P V kernels load and store 16 at a time).
inline int64_t padded_dv(int64_t dv) { return (dv + 15) / 16 * 16; }

struct OnlineSoftmax {
  float max = -std::numeric_limits<float>::infinity();
  float sum = 0.f;
  float* acc = nullptr;  // Dv floats owned by the caller, zeroed before use
  int64_t dv = 0;

  // The state before any key: no max yet, nothing summed; acc (dv floats) must be zeroed by the caller.
  static OnlineSoftmax empty(float* acc, int64_t dv) {
    return OnlineSoftmax{-std::numeric_limits<float>::infinity(), 0.f, acc, dv};
  }

  // Raises the running max to m (when larger) and rescales sum and acc; returns the factor applied.
  float rebase(float m, const Kernels& kern) {
    if (!(m > max)) return 1.f;  // also false for NaN m: NaN reaches the output through sum instead
    const float alpha = max == -std::numeric_limits<float>::infinity() ? 0.f : std::exp(max - m);
    max = m;
    if (alpha != 1.f) {
      sum *= alpha;
      kern.scal(alpha, acc, dv);
    }
    return alpha;
  }

  // One row of a score tile before its P x V product: the logits s[0, n) (-inf: not visible) become the weights
  // w * exp(s - max) in place (all 0 when nothing is visible), counted into sum; acc is rescaled to the new max,
  // ready for the tile's P x V to be added.
  void add_tile_row(float* s, int64_t n, const Kernels& kern, float w = 1.f) {
    const float bm = kern.max(s, n);
    if (bm == -std::numeric_limits<float>::infinity()) {
      for (int64_t c = 0; c < n; ++c) s[c] = 0.f;
      return;
    }
    rebase(bm, kern);
    sum += w * kern.exp_sum(s, n, max);
    if (w != 1.f) kern.scal(w, s, n);
  }

  // Adds n keys at once: logits s[t] (overwritten with their weights) and value rows v + ids[t] * dv, each
  // counted w times. One rebase for the block instead of one per key.
  void add(float* s, const int32_t* ids, int64_t n, const float* v, const Kernels& kern, float w = 1.f) {
    if (n <= 0) return;
    const float bm = kern.max(s, n);
    if (std::isnan(bm)) {
      sum = std::numeric_limits<float>::quiet_NaN();
      return;
    }
    if (bm == -std::numeric_limits<float>::infinity()) return;
    rebase(bm, kern);
    sum += w * kern.exp_sum(s, n, max);
    if (w != 1.f) kern.scal(w, s, n);
    kern.gather_axpy(s, v, dv, ids, n, dv, acc);
  }

  // y = acc / sum, or zeros when no key was visible.
  void finish(float* y) const {
    if (max == -std::numeric_limits<float>::infinity() && !std::isnan(sum)) {
      for (int64_t e = 0; e < dv; ++e) y[e] = 0.f;
      return;
    }
    const float inv = 1.f / sum;
    for (int64_t e = 0; e < dv; ++e) y[e] = acc[e] * inv;
  }
};

}  // namespace iceformer
