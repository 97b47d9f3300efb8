// Vector primitives behind one dispatch point: a scalar reference and vectorised tiers with identical contracts
// (hand-written AVX-512, Highway's AVX2 / AVX-512 / NEON builds). kernels() picks the best tier the CPU runs;
// ICEFORMER_SIMD=<tier> forces one (simd_dispatch.cc).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace iceformer {

// K is packed per (batch, KV head) into panels of 16 keys: panel p holds kp[p*D*16 + d*16 + c] = K[16p+c][d]
// (keys past T are zero).
constexpr int64_t kPanel = 16;

// Low-rank keys are stored as 8-bit integers, 4 dimensions per 32-bit lane: panel p of a rank-4*R4 key block holds
// kb[p*R4*64 + g*64 + 4*lane + j] = k8(16p + lane)[4g + j], unsigned (lowrank.cc: round(x / s_d) + 128, s_d one
// scale per dimension). A query row holds R4 uint32 words, word g = its signed bytes q8[4g .. 4g+3], |q8| <=
// kQueryLevels (so that the x86 Highway kernels' int16 pair sums, at most 2 * 255 * 64, never saturate). The integer
// score sum_d q8[d] k8[d] is exact in int32 and in float (|score| < 2^24); for a row it is a positive multiple of the
// rank-r product plus a constant (128 sum_d q8[d]), so rankings and per-row thresholds are unchanged by the offset.
// VNNI does 64 of these multiply-adds per instruction (bfloat16 dot products do 32).
constexpr float kQueryLevels = 64.f;

// The k-NN path's P V tiles run in bfloat16 (bf16.h) on pair words, pair(a, b) = bf16(a) | bf16(b) << 16: values as
// pairs of keys, vw[(c/2)*dv + e] = pair(v(c)[e], v(c+1)[e]), weights as pair(p[c], p[c+1]). A pair product adds the
// high then the low product to the fp32 accumulator (each product of two bfloat16 is exact in fp32), which is what
// AVX512-BF16's dot product computes (32 multiply-adds per instruction against fp32's 16).
struct Kernels {
  const char* name;
  // s[r*lds + c] = sum_d q[r*ldq + d] * key(c)[d] for r < rows, c < 16*npanels.
  void (*qk_tile)(const float* q, int64_t ldq, int64_t rows, const float* kp, int64_t D, int64_t npanels, float* s,
                  int64_t lds);
  // The same scores with the keys read in place, as rows: s[r*lds + c] = sum_d q[r*ldq + d] * k[c*ldk + d] for
  // r < rows, c < n (a decode step's few query rows against a cache, where packing panels would cost a copy).
  void (*qk_keys)(const float* q, int64_t ldq, int64_t rows, const float* k, int64_t ldk, int64_t n, int64_t D,
                  float* s, int64_t lds);
  // Integer scores (as floats) of rows x 16*npanels low-rank keys (layout above, R4 words each), filtered as they
  // are made: for each row r, the columns c < vis[r] whose score is > thr[r] are appended (column, score) at
  // idx/val[r*cap + count[r]++] (cap >= 16 * npanels; entries past count[r] may be overwritten).
  void (*qk_above_i8)(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                      const int64_t* vis, const float* thr, int32_t* idx, float* val, int64_t cap, int64_t* count);
  // The same integer scores when only the union of the rows' hits matters: for each panel p < npanels, bit c of
  // bits[p] is OR-ed with "some row r has 16p + c < vis[r] and score > thr[r]" (no per-row lists, no branch).
  void (*qk_union_i8)(const uint32_t* q, int64_t ldq, int64_t rows, const uint8_t* kb, int64_t R4, int64_t npanels,
                      const int64_t* vis, const int32_t* thr, uint16_t* bits);
  // o[r*ldo + e] += sum_{c<cols} p[r*ldp + c] * v[c*ldv + e] for r < rows, e < dv.
  void (*pv_tile)(const float* p, int64_t ldp, int64_t rows, int64_t cols, const float* v, int64_t ldv, int64_t dv,
                  float* o, int64_t ldo);
  // max_i x[i] (-inf for n = 0; NaN-propagating).
  float (*max)(const float* x, int64_t n);
  // x[i] = exp(x[i] - m) (exactly 0 for x[i] = -inf), returns the sum.
  float (*exp_sum)(float* x, int64_t n, float m);
  float (*dot)(const float* a, const float* b, int64_t n);
  // x[i] *= a
  void (*scal)(float a, float* x, int64_t n);
  // Number of i with x[i] >= thr.
  int64_t (*count_ge)(const float* x, int64_t n, float thr);
  // The k-th largest of v[0, n) (0 < k <= n) for integers in (-2^24, 2^24) held as floats (the low-rank scan's
  // scores); v may be overwritten.
  float (*kth_largest_int)(float* v, int64_t n, int64_t k);
  // out[t] = scale * (q . rows[ids[t]]) for t < n, rows of length D at stride ld.
  void (*gather_dot)(const float* q, const float* rows, int64_t ld, const int32_t* ids, int64_t n, int64_t D,
                     float scale, float* out);
  // acc[e] += sum_t w[t] * rows[ids[t]][e] for e < dv.
  void (*gather_axpy)(const float* w, const float* rows, int64_t ld, const int32_t* ids, int64_t n, int64_t dv,
                      float* acc);
  // One panel (layout above) from m <= 16 rows of D floats: panel[d*16 + c] = rows[c][d], 0 for c >= m.
  void (*pack_panel)(const float* const* rows, int64_t m, int64_t D, float* panel);
  // out[i] = pair(a[i], b[i]) for i < n (b = nullptr: zeros).
  void (*to_pairs)(const float* a, const float* b, int64_t n, uint32_t* out);
  // Re-pairs keys already in pair words: out[i] = pair(half ha of a[i], half hb of b[i]) (half 0 the low, 1 the high
  // bfloat16; b = nullptr: zeros).
  void (*repair)(const uint32_t* a, int ha, const uint32_t* b, int hb, int64_t n, uint32_t* out);
  // pv_tile with P rounded to bfloat16 and V as key-pair words (cols even): o[r*ldo + e] += sum_c p[r*ldp + c] v(c)[e].
  void (*pv_tile_bf16)(const float* p, int64_t ldp, int64_t rows, int64_t cols, const uint32_t* vw, int64_t dv,
                       float* o, int64_t ldo);
  // A 64-bit hash of the bits of x[0, n) (the definition below, the same value on every tier).
  uint64_t (*row_hash)(const float* x, int64_t n);
  // Whether the k-NN path runs its P V in bfloat16 (pv_tile_bf16) or fp32 (pv_tile). bfloat16 pays only with a
  // bfloat16 dot product in hardware (AVX512-BF16); emulated, its splitting costs more than the halved bytes save.
  bool pv_bf16;
};

// row_hash: eight 32-bit lanes, lane l = sum over d = l (mod 8) of row_hash_term(x[d], d) mod 2^32, i.e. (bits of
// x[d] + 1) times the odd c_d = kRowHashMul (2d + 1); then row_hash_finish mixes sum_l lane_l m_l mod 2^64 (odd m_l)
// with n. A change of one coordinate always changes the hash (c_d and m_l are invertible, and a lane's change is below
// 2^32); other changes collide with probability ~2^-64. Lanes of 32 bits so that vector tiers multiply in one
// instruction (the k-NN decode checks a hash per gathered key row: a 64-bit scalar sum cost a sixth of a step).
constexpr uint32_t kRowHashMul = 0x9e3779b9u;
inline uint32_t row_hash_term(float x, int64_t d) {
  uint32_t w;
  std::memcpy(&w, &x, sizeof w);
  return (w + 1u) * (kRowHashMul * static_cast<uint32_t>(2 * d + 1));
}
uint64_t row_hash_finish(const uint32_t lanes[8], int64_t n);

const Kernels& scalar_kernels();
const Kernels* avx512_kernels();       // nullptr when not compiled in
const Kernels* avx512_vnni_kernels();  // the same with the AVX512-VNNI dot product; nullptr when not compiled in
// The VNNI kernels with AVX512-BF16's dot product for the bfloat16 P V tiles; nullptr when not compiled in.
const Kernels* avx512_bf16_kernels();
// Highway's builds of the same source (simd_hwy.cc); nullptr when the target is not compiled in (other architectures).
const Kernels* avx2_kernels();  // AVX2 + FMA (x86-64-v3)
// The avx2 table with the low-rank scan on AVX-VNNI's byte dot product (simd_avx2_vnni.cc); nullptr when not compiled
// in.
const Kernels* avx2_vnni_kernels();
const Kernels* avx512_hwy_kernels();  // AVX-512 F/VL/DQ/BW, for comparison with the hand-written AVX-512 kernels
const Kernels* neon_kernels();        // ARM64 Advanced SIMD
const Kernels& kernels();             // the dispatch point
// The tiers kernels() can use on this CPU, best first, comma-separated (e.g. "avx512-vnni-bf16,...,avx2,scalar").
std::string simd_tiers();
// The table of a tier this CPU runs (by name or alias), else nullptr.
const Kernels* tier_kernels(const char* name);
// Why ICEFORMER_SIMD cannot be honoured (an unknown tier, or one this CPU or build cannot run); empty when it can.
std::string simd_env_error();

}  // namespace iceformer
