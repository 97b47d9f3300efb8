// The low-rank basis and 8-bit keys of the k-NN block sets (lowrank.h): second moments of keys and queries,
// subspace iteration, quantised panels. The per-block scan is lowrank_scan.cc.
#include "lowrank.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "masking.h"
#include "rng.h"
#include "simd.h"

namespace iceformer {
namespace {

constexpr int64_t kSampleKeys = 2048;  // keys, and queries of a KV group, sampled (by stride) for Gk and Gq
constexpr int kIterations = 16;        // subspace iterations

struct BuildScratch {
  std::vector<double> g, gq, x, y, t;
  std::vector<float> kr;
};
thread_local BuildScratch t_build;

// out = G a (G: D x D, row-major).
void times(const std::vector<double>& G, int64_t D, const double* a, double* out) {
  for (int64_t i = 0; i < D; ++i) {
    double acc = 0;
    for (int64_t j = 0; j < D; ++j) acc += G[i * D + j] * a[j];
    out[i] = acc;
  }
}

// Makes the r columns of x (D x r, column-major) orthonormal in the inner product <a, c> = a^T G c (G symmetric
// positive definite, D x D), by Gram-Schmidt run twice; degenerate columns become unit vectors scaled to G-norm 1.
void g_orthonormalise(const std::vector<double>& G, std::vector<double>& x, int64_t D, int64_t r,
                      std::vector<double>& gx) {
  gx.resize(D);
  for (int64_t c = 0; c < r; ++c) {
    double* xc = x.data() + c * D;
    for (int pass = 0; pass < 2; ++pass) {
      times(G, D, xc, gx.data());
      for (int64_t e = 0; e < c; ++e) {
        const double* xe = x.data() + e * D;
        double dot = 0;  // <x_c, x_e>_G
        for (int64_t d = 0; d < D; ++d) dot += gx[d] * xe[d];
        for (int64_t d = 0; d < D; ++d) xc[d] -= dot * xe[d];
      }
    }
    times(G, D, xc, gx.data());
    double nn = 0;
    for (int64_t d = 0; d < D; ++d) nn += xc[d] * gx[d];
    if (!(nn > 1e-300) || !std::isfinite(nn)) {
      for (int64_t d = 0; d < D; ++d) xc[d] = d == c % D ? 1.0 / std::sqrt(G[d * D + d]) : 0.0;
      continue;  // the next pass of a later column keeps the set orthogonal enough for scoring
    }
    const double inv = 1.0 / std::sqrt(nn);
    for (int64_t d = 0; d < D; ++d) xc[d] *= inv;
  }
}

// G += sum over the stride-sampled real rows j of x_j x_j^T (x_j = rows + j * D, rows with a non-finite entry skipped),
// lower triangle only; returns the rows added.
int64_t add_second_moment(const float* rows, int64_t n, int64_t stride, int64_t D, const KeyPaddingView* padding,
                          int64_t T, int64_t b, std::vector<double>& G) {
  int64_t added = 0;
  for (int64_t j = 0; j < n; j += stride) {
    if (padding != nullptr && !key_is_real(*padding, T, b, j)) continue;
    const float* x = rows + j * D;
    if (!all_finite(x, D)) continue;
    for (int64_t a = 0; a < D; ++a) {
      const double xa = x[a];
      double* row = G.data() + a * D;
      for (int64_t c = 0; c <= a; ++c) row[c] += xa * x[c];
    }
    ++added;
  }
  return added;
}

// Symmetrises a lower-triangle sum of `count` outer products into its mean, plus a ridge of 1e-6 of the mean
// diagonal (so that it is positive definite); the identity when nothing was added.
void finish_moment(std::vector<double>& G, int64_t D, int64_t count) {
  double trace = 0;
  for (int64_t a = 0; a < D; ++a) {
    for (int64_t c = 0; c < a; ++c) G[c * D + a] = G[a * D + c] /= std::max<int64_t>(count, 1);
    trace += G[a * D + a] /= std::max<int64_t>(count, 1);
  }
  if (count == 0 || !(trace > 0) || !std::isfinite(trace)) {
    for (int64_t a = 0; a < D; ++a)
      for (int64_t c = 0; c < D; ++c) G[a * D + c] = a == c ? 1.0 : 0.0;
    return;
  }
  for (int64_t a = 0; a < D; ++a) G[a * D + a] += 1e-6 * trace / static_cast<double>(D);
}

// Key j's code from its projection kr[0, r): round(kr_d / s_d) clamped to [-127, 127], + 128, at its panel slot
// (simd.h layout); non-finite coordinates as 0.
void store_code(LowRankSet* set, int64_t bh, int64_t j, const float* kr) {
  uint8_t* dst = set->panels.data() + bh * set->per_head + (j / kPanel) * set->r4 * 64 + 4 * (j % kPanel);
  const float* scale = set->kscale.data() + bh * set->r;
  for (int64_t c = 0; c < set->r; ++c) {
    const float x = kr[c] / scale[c];
    const float v = std::isfinite(x) ? std::min(127.f, std::max(-127.f, std::nearbyint(x))) : 0.f;
    dst[(c / 4) * 64 + c % 4] = static_cast<uint8_t>(static_cast<int>(v) + 128);
  }
}

}  // namespace

void init_lowrank(const AttentionParams& p, int64_t rank, LowRankSet* set, int64_t capacity) {
  const AttentionShape& sh = p.shape;
  set->r = std::max<int64_t>(1, std::min(rank, sh.D));
  set->r4 = (set->r + 3) / 4;
  set->per_head = ((std::max(capacity, sh.T) + kPanel - 1) / kPanel) * set->r4 * 64;
  set->kscale.assign(static_cast<size_t>(sh.B * sh.Hkv * set->r), 1.f);
  set->kbasis.assign(static_cast<size_t>(sh.B * sh.Hkv * set->r * sh.D), 0.f);
  set->qbasis.assign(static_cast<size_t>(sh.B * sh.Hkv * set->r * sh.D), 0.f);
  set->panels.assign(static_cast<size_t>(sh.B * sh.Hkv * set->per_head), 0);
}

void build_lowrank(const AttentionParams& p, int64_t b, int64_t hkv, LowRankSet* set) {
  const AttentionShape& sh = p.shape;
  const Kernels& kern = kernels();
  const int64_t T = sh.T, D = sh.D, r = set->r, bh = b * sh.Hkv + hkv;
  const float* K = p.key_rows(b, hkv);
  BuildScratch& sc = t_build;
  // Scores q . k are approximated by q^T Gk X X^T k, X (D x r) the top-r eigenvectors of Gq Gk made Gk-orthonormal:
  // for whitened keys this keeps the r directions of Gk^(1/2) q with the most energy, the best rank-r approximation of
  // the scores in mean square over these queries and keys (Gk, Gq: second moments of stride samples of the real
  // keys and of the group's queries). Eigenvectors of Gk alone (Gq = I) ignore where the queries point: on Qwen2.5's
  // keys they left 1.4-5.6 points more softmax mass outside each row's best 307 keys (docs/decisions.md).
  const int64_t group = sh.group();
  sc.g.assign(D * D, 0.0);
  const int64_t nk = add_second_moment(K, T, std::max<int64_t>(1, T / kSampleKeys), D, &p.key_padding, T, b, sc.g);
  finish_moment(sc.g, D, nk);
  sc.gq.assign(D * D, 0.0);
  int64_t nq = 0;
  const int64_t qstride = std::max<int64_t>(1, sh.S * group / kSampleKeys);
  for (int64_t h = hkv * group; h < (hkv + 1) * group; ++h)
    nq += add_second_moment(p.q + (b * sh.Hq + h) * sh.S * D, sh.S, qstride, D, nullptr, T, b, sc.gq);
  finish_moment(sc.gq, D, nq);
  // Subspace iteration X <- Gk-orth(Gq Gk X) from a seeded start.
  sc.x.resize(D * r);
  sc.y.resize(D * r);
  Rng rng(Rng::mix(static_cast<uint64_t>(p.knn.seed) ^ 0x6a09e667f3bcc909ULL));
  for (double& v : sc.x) v = rng.normal();
  g_orthonormalise(sc.g, sc.x, D, r, sc.t);
  auto columns_times = [&](const std::vector<double>& G, const std::vector<double>& from, std::vector<double>& to) {
    for (int64_t c = 0; c < r; ++c) times(G, D, from.data() + c * D, to.data() + c * D);
  };
  for (int it = 0; it < kIterations; ++it) {
    columns_times(sc.g, sc.x, sc.y);
    columns_times(sc.gq, sc.y, sc.x);
    g_orthonormalise(sc.g, sc.x, D, r, sc.t);
  }
  columns_times(sc.g, sc.x, sc.y);  // the queries' directions, Gk X
  float* kbasis = set->kbasis.data() + bh * r * D;
  float* qbasis = set->qbasis.data() + bh * r * D;
  for (int64_t t = 0; t < r * D; ++t) kbasis[t] = static_cast<float>(sc.x[t]), qbasis[t] = static_cast<float>(sc.y[t]);
  // Kr = K X; s_d = max |Kr[., d]| / 127 over the real, finite keys; stored as round(Kr / s_d) + 128 in [1, 255],
  // panels of 16 keys (simd.h layout; a rank that is not a multiple of 4 is padded with 128 = 0). Non-finite
  // coordinates are stored as 0 (such keys are attended, if at all, through the exact tiles).
  uint8_t* panels = set->panels.data() + bh * set->per_head;
  float* scale = set->kscale.data() + bh * r;
  sc.kr.resize(T * r);
  std::fill(scale, scale + r, 0.f);
  kern.qk_keys(K, D, T, kbasis, D, r, D, sc.kr.data(), r);  // kr[j * r + c] = k_j . basis_c
  for (int64_t j = 0; j < T; ++j) {
    if (!key_is_real(p.key_padding, T, b, j)) continue;
    for (int64_t c = 0; c < r; ++c) {
      const float x = sc.kr[j * r + c];
      if (std::isfinite(x)) scale[c] = std::max(scale[c], std::fabs(x));
    }
  }
  for (int64_t c = 0; c < r; ++c) scale[c] = scale[c] > 0.f ? scale[c] / 127.f : 1.f;
  std::fill(panels, panels + set->per_head, uint8_t{128});
  for (int64_t j = 0; j < T; ++j) store_code(set, bh, j, sc.kr.data() + j * r);
}

void code_keys(const AttentionParams& p, int64_t b, int64_t hkv, int64_t j0, int64_t j1, LowRankSet* set) {
  const Kernels& kern = kernels();
  const int64_t D = p.shape.D, r = set->r, bh = b * p.shape.Hkv + hkv;
  const float* K = p.key_rows(b, hkv);
  const float* kbasis = set->kbasis.data() + bh * r * D;
  std::vector<float>& kr = t_build.kr;
  kr.resize(std::max<int64_t>(1, (j1 - j0) * r));
  if (j1 > j0) kern.qk_keys(K + j0 * D, D, j1 - j0, kbasis, D, r, D, kr.data(), r);
  for (int64_t j = j0; j < j1; ++j) store_code(set, bh, j, kr.data() + (j - j0) * r);
}

}  // namespace iceformer
