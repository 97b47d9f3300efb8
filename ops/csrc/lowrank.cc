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
constexpr int64_t kBlockK = 1024;      // keys per approximate-score tile

constexpr double kMargin = 1.2;        // pass 1 aims for this many times the budget
constexpr int64_t kSamplePanels = 48;  // pass 1 scores about 48 evenly spaced panels (768 keys) per row

struct LowRankScratch {
  std::vector<double> g, gq, x, y, t;
  std::vector<float> thr, kr, qf;
  std::vector<uint8_t> sample;
  std::vector<uint32_t> qb;
  std::vector<int32_t> ithr;
  std::vector<uint16_t> bits;
  std::vector<int32_t> hit_id;
  std::vector<float> hit_val;
  std::vector<int64_t> vis, count, last, first;
};
thread_local LowRankScratch t_lr;

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
    bool finite = true;
    for (int64_t d = 0; d < D; ++d) finite &= std::isfinite(x[d]);
    if (!finite) continue;
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

}  // namespace

void init_lowrank(const AttentionParams& p, int64_t rank, LowRankSet* set) {
  const AttentionShape& sh = p.shape;
  set->r = std::max<int64_t>(1, std::min(rank, sh.D));
  set->r4 = (set->r + 3) / 4;
  set->per_head = ((sh.T + kPanel - 1) / kPanel) * set->r4 * 64;
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
  LowRankScratch& sc = t_lr;
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
  for (int64_t j = 0; j < T; ++j) {
    const bool real = key_is_real(p.key_padding, T, b, j);
    for (int64_t c = 0; c < r; ++c) {
      const float x = kern.dot(K + j * D, kbasis + c * D, D);
      sc.kr[j * r + c] = x;
      if (real && std::isfinite(x)) scale[c] = std::max(scale[c], std::fabs(x));
    }
  }
  for (int64_t c = 0; c < r; ++c) scale[c] = scale[c] > 0.f ? scale[c] / 127.f : 1.f;
  std::fill(panels, panels + set->per_head, uint8_t{128});
  for (int64_t j = 0; j < T; ++j) {
    uint8_t* dst = panels + (j / kPanel) * set->r4 * 64 + 4 * (j % kPanel);
    for (int64_t c = 0; c < r; ++c) {
      const float x = sc.kr[j * r + c] / scale[c];
      const float v = std::isfinite(x) ? std::min(127.f, std::max(-127.f, std::nearbyint(x))) : 0.f;
      dst[(c / 4) * 64 + c % 4] = static_cast<uint8_t>(static_cast<int>(v) + 128);
    }
  }
}

namespace {

// One query block's scan: rows [i0, i0 + rows) of (b, hq) against the low-rank keys of (b, hq / group).
struct ScanBlock {
  const AttentionParams& p;
  int64_t b, hq, i0, rows;
  const uint8_t* panels;  // the 8-bit keys of (b, hkv)
  int64_t r4;
  int64_t last_any;
  bool any_mask, plain;  // plain: visible = the causal limit only (no masks, padding or hard window)
  std::vector<MaskRow> masks;

  bool visible(const LowRankScratch& sc, int64_t t, int64_t j) const {
    return j <= sc.last[t] && j >= sc.first[t] && key_is_real(p.key_padding, p.shape.T, b, j) &&
           !(any_mask && masks[t].value(j) == kNegInf);
  }
};

// Queries: qf = q P, q8 = round(127 (q P)_d s_d / max_d |(q P)_d s_d|), so that sum_d q8[d] k8[d] is proportional
// to (q P).(K P) up to rounding and a per-row offset (simd.h). A non-finite row scores 0 everywhere: nothing passes
// its threshold.
void quantise_queries(const ScanBlock& blk, const float* basis, const float* kscale, int64_t r, LowRankScratch& sc) {
  const Kernels& kern = kernels();
  const AttentionShape& sh = blk.p.shape;
  const int64_t D = sh.D, r4 = blk.r4;
  sc.qb.assign(blk.rows * r4, 0u);
  sc.qf.resize(blk.rows * r);
  for (int64_t t = 0; t < blk.rows; ++t) {
    const float* q = blk.p.q + ((blk.b * sh.Hq + blk.hq) * sh.S + blk.i0 + t) * D;
    float top = 0.f;
    for (int64_t c = 0; c < r; ++c) {
      sc.qf[t * r + c] = kern.dot(q, basis + c * D, D);
      top = std::max(top, std::fabs(sc.qf[t * r + c] * kscale[c]));
    }
    if (!(top > 0.f) || !std::isfinite(top)) continue;
    for (int64_t c = 0; c < r; ++c) {
      const int v = static_cast<int>(std::nearbyint(127.f * (sc.qf[t * r + c] * kscale[c]) / top));
      sc.qb[t * r4 + c / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(v))) << (8 * (c % 4));
    }
  }
}

// Pass 1: a per-row threshold sc.thr from every stride-th panel (about kSamplePanels of them), set so that about
// `budget` keys pass (kMargin above: a sample estimate misses either way, and too few retrieved costs more
// accuracy than a few more keys cost time). Rows whose budget covers every key they may see keep -inf.
void row_thresholds(const ScanBlock& blk, const int64_t* real_prefix, int64_t budget, LowRankScratch& sc) {
  const Kernels& kern = kernels();
  const int64_t rows = blk.rows, r4 = blk.r4;
  const int64_t npan = blk.last_any / kPanel + 1;
  const int64_t stride = std::max<int64_t>(1, npan / kSamplePanels);
  const int64_t nsamp = (npan + stride - 1) / stride;
  const int64_t sw = nsamp * kPanel;
  sc.sample.resize(nsamp * r4 * 64);
  for (int64_t s2 = 0; s2 < nsamp; ++s2)
    std::copy_n(blk.panels + s2 * stride * r4 * 64, r4 * 64, sc.sample.data() + s2 * r4 * 64);
  // Scores of the sampled keys each row may see (threshold -inf: the filter keeps every score). Pass 2 lists hits
  // per row only with masks or padding.
  sc.hit_id.resize(blk.plain ? rows * sw : std::max<int64_t>(rows * sw, rows * kBlockK));
  sc.hit_val.resize(sc.hit_id.size());
  sc.vis.resize(rows);
  sc.count.assign(rows, 0);
  sc.thr.assign(rows, kNegInf);
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t last = sc.last[t];
    // Sample panel s2 starts at key s2 * stride * 16: its columns c < 16 map to keys j0 + c.
    const int64_t full = last < 0 ? 0 : std::min<int64_t>(nsamp, last / (stride * kPanel) + 1);
    sc.vis[t] =
        full == 0 ? 0 : (full - 1) * kPanel + std::min<int64_t>(kPanel, last + 1 - (full - 1) * stride * kPanel);
  }
  kern.qk_above_i8(sc.qb.data(), r4, rows, sc.sample.data(), r4, nsamp, sc.vis.data(), sc.thr.data(), sc.hit_id.data(),
                   sc.hit_val.data(), sw, sc.count.data());
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t last = sc.last[t];
    if (last < 0) continue;
    const int64_t first = std::min(sc.first[t], last + 1);
    if (budget >= real_prefix[last + 1] - real_prefix[first]) continue;  // the budget covers every key it may see
    // The row's sampled scores, compacted in place to the keys it may see (all of them without masks).
    float* vals = sc.hit_val.data() + t * sw;
    int64_t nv = sc.count[t];
    if (!blk.plain) {
      nv = 0;
      for (int64_t h = 0; h < sc.count[t]; ++h) {
        const int64_t c = sc.hit_id[t * sw + h], j = (c / kPanel) * stride * kPanel + c % kPanel;
        if (blk.visible(sc, t, j)) vals[nv++] = vals[h];
      }
    }
    // The sample holds a share nv / visible of the row's keys.
    const double visible_est = static_cast<double>(last + 1 - first);
    const int64_t want =
        std::max<int64_t>(1, static_cast<int64_t>(std::ceil(kMargin * budget * static_cast<double>(nv) / visible_est)));
    if (nv > want) {
      const float kth = kern.kth_largest_int(vals, nv, want);
      sc.thr[t] = std::nextafter(kth, kNegInf);
    }
  }
}

// Pass 2: approximate scores of the visible keys, filtered by the row's threshold as the kernel makes them; the keys
// that pass join the block's set. Without masks or padding only the union matters: the kernel ORs the rows' hits per
// panel, with integer thresholds (score > thr <=> score > floor(thr) for an integer score); otherwise each row's hits
// are listed and checked against its masks.
void scan_union(const ScanBlock& blk, LowRankScratch& sc, KeyMarks* in) {
  const Kernels& kern = kernels();
  const int64_t rows = blk.rows, r4 = blk.r4, last_any = blk.last_any;
  if (blk.plain) {
    sc.ithr.resize(rows);
    for (int64_t t = 0; t < rows; ++t) {
      const double f = std::floor(static_cast<double>(sc.thr[t]));  // -inf: every visible key passes
      sc.ithr[t] = static_cast<int32_t>(std::min<double>(std::max<double>(f, -(1 << 30)), 1 << 30));
    }
    sc.bits.assign(last_any / kPanel + 1, 0);
  }
  for (int64_t j0 = 0; j0 <= last_any; j0 += kBlockK) {
    const int64_t cols = std::min<int64_t>(kBlockK, last_any + 1 - j0);
    const int64_t npanels = (cols + kPanel - 1) / kPanel;
    const uint8_t* kb = blk.panels + (j0 / kPanel) * r4 * 64;
    for (int64_t t = 0; t < rows; ++t) sc.vis[t] = std::max<int64_t>(0, std::min(cols, sc.last[t] + 1 - j0));
    if (blk.plain) {
      kern.qk_union_i8(sc.qb.data(), r4, rows, kb, r4, npanels, sc.vis.data(), sc.ithr.data(),
                       sc.bits.data() + j0 / kPanel);
      continue;
    }
    sc.count.assign(rows, 0);
    kern.qk_above_i8(sc.qb.data(), r4, rows, kb, r4, npanels, sc.vis.data(), sc.thr.data(), sc.hit_id.data(),
                     sc.hit_val.data(), kBlockK, sc.count.data());
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t h = 0; h < sc.count[t]; ++h) {
        const int64_t j = j0 + sc.hit_id[t * kBlockK + h];
        if (blk.visible(sc, t, j)) in->mark(j);
      }
  }
  if (blk.plain) in->mark_bits(sc.bits.data(), last_any + 1);
}

}  // namespace

void lowrank_union(const AttentionParams& p, const LowRankSet& set, const int64_t* real_prefix, int64_t b, int64_t hq,
                   int64_t i0, int64_t i1, int64_t budget, KeyMarks* in) {
  const AttentionShape& sh = p.shape;
  const int64_t rows = i1 - i0, bh = b * sh.Hkv + hq / sh.group();
  LowRankScratch& sc = t_lr;
  sc.last.resize(rows);
  sc.first.resize(rows);
  int64_t last_any = -1;
  for (int64_t t = 0; t < rows; ++t) {
    sc.last[t] = row_last(p, b, hq, i0 + t);
    sc.first[t] = row_first(p, b, i0 + t);
    last_any = std::max(last_any, sc.last[t]);
  }
  if (last_any < 0 || budget <= 0) return;
  const bool any_mask = p.mask.kind != MaskKind::kNone;
  ScanBlock blk{p,        b,
                hq,       i0,
                rows,     set.panels.data() + bh * set.per_head,
                set.r4,   last_any,
                any_mask, !any_mask && p.key_padding.kind == KeyPaddingKind::kNone && p.window < 0,
                {}};
  if (any_mask) {
    blk.masks.resize(static_cast<size_t>(rows));
    for (int64_t t = 0; t < rows; ++t) blk.masks[t] = mask_row(p.mask, b, hq, i0 + t);
  }
  quantise_queries(blk, set.qbasis.data() + bh * set.r * sh.D, set.kscale.data() + bh * set.r, set.r, sc);
  row_thresholds(blk, real_prefix, budget, sc);
  scan_union(blk, sc, in);
}

}  // namespace iceformer
