// The low-rank scan of the k-NN block sets (lowrank.h): per query block, quantised queries, per-row thresholds from
// a sample of the keys, then one integer scan of the visible keys whose hits form the block's retrieved set.
#include <algorithm>
#include <cmath>
#include <limits>

#include "lowrank.h"
#include "masking.h"
#include "simd.h"

namespace iceformer {
namespace {

constexpr int64_t kBlockK = 1024;      // keys per approximate-score tile
constexpr double kMargin = 1.2;        // pass 1 aims for this many times the budget
constexpr int64_t kSamplePanels = 48;  // pass 1 scores about 48 evenly spaced panels (768 keys) per row

struct ScanScratch {
  std::vector<float> thr, qf;
  std::vector<uint8_t> sample;
  std::vector<uint32_t> qb;
  std::vector<int32_t> ithr;
  std::vector<uint16_t> bits;
  std::vector<int32_t> hit_id;
  std::vector<float> hit_val;
  std::vector<int64_t> vis, count, last, first;
};
thread_local ScanScratch t_scan;

// One query block's scan: rows [i0, i0 + n) of each of the query heads [hq0, hq0 + heads) of one KV group against the
// low-rank keys of (b, hq0 / group); row t is (hq0 + t / n, i0 + t % n), rows = heads * n.
struct ScanBlock {
  const AttentionParams& p;
  int64_t b, hq0, i0, n, rows;
  const uint8_t* panels;  // the 8-bit keys of (b, hkv)
  int64_t r4;
  int64_t last_any;
  bool any_mask, plain;  // plain: visible = [0, last] (no masks, no hard window, padding at most a length)
  int64_t head(int64_t t) const { return hq0 + t / n; }
  int64_t query(int64_t t) const { return i0 + t % n; }
  std::vector<MaskRow> masks;

  bool visible(const ScanScratch& sc, int64_t t, int64_t j) const {
    return j <= sc.last[t] && j >= sc.first[t] && key_is_real(p.key_padding, p.shape.T, b, j) &&
           !(any_mask && masks[t].value(j) == kNegInf);
  }
};

// Queries: qf = q P, q8 = round(kQueryLevels (q P)_d s_d / max_d |(q P)_d s_d|), so that sum_d q8[d] k8[d] is
// proportional to (q P).(K P) up to rounding and a per-row offset (simd.h). A non-finite row scores 0 everywhere:
// nothing passes its threshold.
void quantise_queries(const ScanBlock& blk, const float* basis, const float* kscale, int64_t r, ScanScratch& sc) {
  const Kernels& kern = kernels();
  const AttentionShape& sh = blk.p.shape;
  const int64_t D = sh.D, r4 = blk.r4;
  sc.qb.assign(blk.rows * r4, 0u);
  sc.qf.resize(blk.rows * r);
  for (int64_t t = 0; t < blk.rows; ++t) {
    const float* q = blk.p.q + ((blk.b * sh.Hq + blk.head(t)) * sh.S + blk.query(t)) * D;
    float top = 0.f;
    for (int64_t c = 0; c < r; ++c) {
      sc.qf[t * r + c] = kern.dot(q, basis + c * D, D);
      top = std::max(top, std::fabs(sc.qf[t * r + c] * kscale[c]));
    }
    if (!(top > 0.f) || !std::isfinite(top)) continue;
    for (int64_t c = 0; c < r; ++c) {
      const int v = static_cast<int>(std::nearbyint(kQueryLevels * (sc.qf[t * r + c] * kscale[c]) / top));
      sc.qb[t * r4 + c / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(v))) << (8 * (c % 4));
    }
  }
}

// Pass 1: a per-row threshold sc.thr from every stride-th panel (about kSamplePanels of them), set so that about
// `budget` keys pass (kMargin above: a sample estimate misses either way, and too few retrieved costs more
// accuracy than a few more keys cost time). Rows whose budget covers every key they may see keep -inf.
void row_thresholds(const ScanBlock& blk, const int64_t* real_prefix, int64_t budget, ScanScratch& sc) {
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
void scan_union(const ScanBlock& blk, ScanScratch& sc, KeyMarks* in) {
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

void lowrank_union(const AttentionParams& p, const LowRankSet& set, const int64_t* real_prefix, int64_t b, int64_t hq0,
                   int64_t heads, int64_t i0, int64_t i1, int64_t budget, KeyMarks* in) {
  const AttentionShape& sh = p.shape;
  const int64_t n = i1 - i0, rows = heads * n, bh = b * sh.Hkv + hq0 / sh.group();
  const bool any_mask = p.mask.kind != MaskDtype::kNone;
  const bool length = p.key_padding.kind == KeyPaddingKind::kLength;
  // With padding as a length, "j is real" is j < L_b: folded into each row's last key, the scan stays plain.
  const int64_t len_last = length ? static_cast<const int64_t*>(p.key_padding.data)[b] - 1 : sh.T;
  ScanScratch& sc = t_scan;
  sc.last.resize(rows);
  sc.first.resize(rows);
  int64_t last_any = -1;
  for (int64_t t = 0; t < rows; ++t) {
    sc.last[t] = std::min(row_last(p, b, hq0 + t / n, i0 + t % n), len_last);
    sc.first[t] = row_first(p, b, i0 + t % n);
    last_any = std::max(last_any, sc.last[t]);
  }
  if (last_any < 0 || budget <= 0) return;
  const bool plain = !any_mask && (p.key_padding.kind == KeyPaddingKind::kNone || length) && p.window < 0;
  ScanBlock blk{p, b, hq0, i0, n, rows, set.panels.data() + bh * set.per_head, set.r4, last_any, any_mask, plain, {}};
  if (any_mask) {
    blk.masks.resize(static_cast<size_t>(rows));
    for (int64_t t = 0; t < rows; ++t) blk.masks[t] = mask_row(p.mask, b, blk.head(t), blk.query(t));
  }
  quantise_queries(blk, set.qbasis.data() + bh * set.r * sh.D, set.kscale.data() + bh * set.r, set.r, sc);
  row_thresholds(blk, real_prefix, budget, sc);
  scan_union(blk, sc, in);
}

}  // namespace iceformer
