// Scalar reference kernels: plain loops, the contract every vectorised variant must match.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "bf16.h"
#include "rng.h"
#include "simd.h"

namespace iceformer {
namespace {

void qk_tile(const float* q, int64_t ldq, int64_t rows, const float* kp, int64_t D, int64_t npanels, float* s,
             int64_t lds) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t p = 0; p < npanels; ++p)
      for (int64_t c = 0; c < kPanel; ++c) {
        float acc = 0.f;
        for (int64_t d = 0; d < D; ++d) acc += q[r * ldq + d] * kp[(p * D + d) * kPanel + c];
        s[r * lds + p * kPanel + c] = acc;
      }
}

int32_t score_i8(const uint32_t* q, const uint8_t* kb, int64_t R4, int64_t c) {
  const int64_t p = c / kPanel, l = c % kPanel;
  int32_t acc = 0;
  for (int64_t g = 0; g < R4; ++g) {
    const uint8_t* k = kb + p * R4 * 64 + g * 64 + 4 * l;
    for (int j = 0; j < 4; ++j) acc += static_cast<int32_t>(k[j]) * static_cast<int8_t>(q[g] >> (8 * j));
  }
  return acc;
}

void qk_above_i8(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                 const int64_t* vis, const float* thr, int32_t* idx, float* val, int64_t cap, int64_t* count) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < vis[r] && c < npanels * kPanel; ++c) {
      const float score = static_cast<float>(score_i8(q + r * ldq, kb, R4, c));
      if (score > thr[r]) {
        idx[r * cap + count[r]] = static_cast<int32_t>(c);
        val[r * cap + count[r]] = score;
        ++count[r];
      }
    }
}

void qk_union_i8(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                 const int64_t* vis, const int32_t* thr, uint16_t* bits) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < vis[r] && c < npanels * kPanel; ++c)
      if (score_i8(q + r * ldq, kb, R4, c) > thr[r]) bits[c / kPanel] |= static_cast<uint16_t>(1u << (c % kPanel));
}

void pv_tile(const float* p, int64_t ldp, int64_t rows, int64_t cols, const float* v, int64_t ldv, int64_t dv, float* o,
             int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float w = p[r * ldp + c];
      for (int64_t e = 0; e < dv; ++e) o[r * ldo + e] += w * v[c * ldv + e];
    }
}

float vmax(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) return x[i];
    m = x[i] > m ? x[i] : m;
  }
  return m;
}

float exp_sum(float* x, int64_t n, float m) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  return sum;
}

float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void qk_keys(const float* q, int64_t ldq, int64_t rows, const float* k, int64_t ldk, int64_t n, int64_t D, float* s,
             int64_t lds) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) s[r * lds + c] = dot(q + r * ldq, k + c * ldk, D);
}

void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void scal(float a, float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

int64_t count_ge(const float* x, int64_t n, float thr) {
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) m += x[i] >= thr ? 1 : 0;
  return m;
}

float kth_largest_int(float* v, int64_t n, int64_t k) {
  std::nth_element(v, v + k - 1, v + n, std::greater<float>());
  return v[k - 1];
}

void gather_dot(const float* q, const float* rows, int64_t ld, const int32_t* ids, int64_t n, int64_t D, float scale,
                float* out) {
  for (int64_t t = 0; t < n; ++t) out[t] = scale * dot(q, rows + static_cast<int64_t>(ids[t]) * ld, D);
}

void gather_axpy(const float* w, const float* rows, int64_t ld, const int32_t* ids, int64_t n, int64_t dv, float* acc) {
  for (int64_t t = 0; t < n; ++t) axpy(w[t], rows + static_cast<int64_t>(ids[t]) * ld, acc, dv);
}

void pack_panel(const float* const* rows, int64_t m, int64_t D, float* panel) {
  for (int64_t d = 0; d < D; ++d)
    for (int64_t c = 0; c < kPanel; ++c) panel[d * kPanel + c] = c < m ? rows[c][d] : 0.f;
}

void to_pairs(const float* a, const float* b, int64_t n, uint32_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_pair(a[i], b != nullptr ? b[i] : 0.f);
}

void repair(const uint32_t* a, int ha, const uint32_t* b, int hb, int64_t n, uint32_t* out) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = ((a[i] >> (16 * ha)) & 0xffffu) | (b != nullptr ? ((b[i] >> (16 * hb)) & 0xffffu) << 16 : 0u);
}

// acc + hi(x) hi(y) + lo(x) lo(y), each step one fp32 rounding (the products are exact).
float pair_step(float acc, uint32_t x, uint32_t y) {
  acc += from_bf16(x >> 16) * from_bf16(y >> 16);
  return acc + from_bf16(x) * from_bf16(y);
}

void pv_tile_bf16(const float* p, int64_t ldp, int64_t rows, int64_t cols, const uint32_t* vw, int64_t dv, float* o,
                  int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; c += 2) {
      const uint32_t w = bf16_pair(p[r * ldp + c], p[r * ldp + c + 1]);
      for (int64_t e = 0; e < dv; ++e) o[r * ldo + e] = pair_step(o[r * ldo + e], w, vw[(c / 2) * dv + e]);
    }
}

uint64_t row_hash(const float* x, int64_t n) {
  uint32_t lanes[8] = {};
  for (int64_t d = 0; d < n; ++d) lanes[d % 8] += row_hash_term(x[d], d);
  return row_hash_finish(lanes, n);
}

}  // namespace

uint64_t row_hash_finish(const uint32_t lanes[8], int64_t n) {
  uint64_t h = 0;
  for (int l = 0; l < 8; ++l) h += static_cast<uint64_t>(lanes[l]) * (0x9e3779b97f4a7c15ULL * (2 * l + 1));
  return Rng::mix(h ^ static_cast<uint64_t>(n));
}

const Kernels& scalar_kernels() {
  static const Kernels k{"scalar",   qk_tile,  qk_keys, qk_above_i8,  qk_union_i8,     pv_tile,    vmax,
                         exp_sum,    dot,      scal,    count_ge,     kth_largest_int, gather_dot, gather_axpy,
                         pack_panel, to_pairs, repair,  pv_tile_bf16, row_hash,        false};
  return k;
}

}  // namespace iceformer
