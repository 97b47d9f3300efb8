// Vector primitives behind one dispatch point: a scalar reference and an AVX-512 variant with identical
// contracts. kernels() picks the best one the CPU supports (ICEFORMER_SIMD=scalar forces the reference).
#pragma once
#include <cstdint>
#include <cstring>

namespace iceformer {

// K is packed per (batch, KV head) into panels of 16 keys: panel p holds kp[p*D*16 + d*16 + c] = K[16p+c][d]
// (keys past T are zero).
constexpr int64_t kPanel = 16;

// Low-rank keys are stored in bfloat16 pairs (half the bytes and, with AVX512-BF16, half the instructions of the
// float scan; the approximate scores only pick candidates): panel p of a rank-2*R2 key block holds
// kb[p*R2*32 + c2*32 + 2*lane + h] = bf16(Kr[16p + lane][2*c2 + h]). A query row holds R2 uint32 words, word c2 =
// bf16(q[2*c2]) | bf16(q[2*c2 + 1]) << 16.
// to_bf16 / from_bf16 below: round to nearest even (NaN stays NaN) / exact widening.

struct Kernels {
  const char* name;
  // s[r*lds + c] = sum_d q[r*ldq + d] * key(c)[d] for r < rows, c < 16*npanels.
  void (*qk_tile)(const float* q, int64_t ldq, int64_t rows, const float* kp, int64_t D, int64_t npanels,
                  float* s, int64_t lds);
  // Scores of rows x 16*npanels low-rank keys in bf16 pairs (layout above, R2 pairs each), filtered as they are
  // made: for each row r, the columns c < vis[r] whose score is > thr[r] are appended (column, score) at
  // idx/val[r*cap + count[r]++] (cap >= 16 * npanels).
  void (*qk_above_bf16)(const uint32_t* q, int64_t ldq, int64_t rows, const uint16_t* kb, int64_t R2,
                        int64_t npanels, const int64_t* vis, const float* thr, int32_t* idx, float* val, int64_t cap,
                        int64_t* count);
  // o[r*ldo + e] += sum_{c<cols} p[r*ldp + c] * v[c*ldv + e] for r < rows, e < dv.
  void (*pv_tile)(const float* p, int64_t ldp, int64_t rows, int64_t cols, const float* v, int64_t ldv,
                  int64_t dv, float* o, int64_t ldo);
  // max_i x[i] (-inf for n = 0; NaN-propagating).
  float (*max)(const float* x, int64_t n);
  // x[i] = exp(x[i] - m) (exactly 0 for x[i] = -inf), returns the sum.
  float (*exp_sum)(float* x, int64_t n, float m);
  float (*dot)(const float* a, const float* b, int64_t n);
  // x[i] *= a
  void (*scal)(float a, float* x, int64_t n);
  // Number of i with x[i] >= thr.
  int64_t (*count_ge)(const float* x, int64_t n, float thr);
  // out[t] = scale * (q . rows[ids[t]]) for t < n, rows of length D at stride ld.
  void (*gather_dot)(const float* q, const float* rows, int64_t ld, const int32_t* ids, int64_t n, int64_t D,
                     float scale, float* out);
  // acc[e] += sum_t w[t] * rows[ids[t]][e] for e < dv.
  void (*gather_axpy)(const float* w, const float* rows, int64_t ld, const int32_t* ids, int64_t n, int64_t dv,
                      float* acc);
  // One panel (layout above) from m <= 16 rows of D floats: panel[d*16 + c] = rows[c][d], 0 for c >= m.
  void (*pack_panel)(const float* const* rows, int64_t m, int64_t D, float* panel);
};

const Kernels& scalar_kernels();
const Kernels* avx512_kernels();       // nullptr when not compiled in
const Kernels* avx512_bf16_kernels();  // the same with the AVX512-BF16 dot product; nullptr when not compiled in
const Kernels& kernels();              // the dispatch point

inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float from_bf16(uint16_t x) {
  const uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace iceformer
