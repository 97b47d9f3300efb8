#include "exact_attention.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "masking.h"
#include "online_softmax.h"
#include "simd.h"
#include "stream_in.h"

namespace iceformer {
namespace {

// Per-thread scratch, grown once to the largest tile it has seen.
struct ExactScratch {
  std::vector<float> q, s, o;
  std::vector<OnlineSoftmax> rows;
  std::vector<float> key_bias;  // 0 or -inf per key of the block (key_padding_mask)
  std::vector<int64_t> ids;
};
thread_local ExactScratch t_scratch;

}  // namespace

int64_t packed_keys_size(const AttentionShape& s) { return ((s.T + kPanel - 1) / kPanel) * kPanel * s.D; }

void pack_panels(const float* K, int64_t D, const int32_t* ids, int64_t n, float* dst) {
  const Kernels& kern = kernels();
  const int64_t npanels = (n + kPanel - 1) / kPanel;
  for (int64_t pn = 0; pn < npanels; ++pn) {
    const int64_t j0 = pn * kPanel, m = std::min<int64_t>(kPanel, n - j0);
    const float* rows[kPanel];
    for (int64_t c = 0; c < m; ++c) rows[c] = K + (ids != nullptr ? static_cast<int64_t>(ids[j0 + c]) : j0 + c) * D;
    if (ids != nullptr)  // gathered rows: ask for the next panel's while this one is packed
      for (int64_t c = j0 + kPanel; c < std::min(n, j0 + 2 * kPanel); ++c)
        prefetch_row(K + static_cast<int64_t>(ids[c]) * D, D);
    kern.pack_panel(rows, m, D, dst + pn * D * kPanel);
  }
}

void pack_keys(const AttentionParams& p, int64_t b, int64_t hkv, float* dst) {
  const int64_t T = p.shape.T, D = p.shape.D;
  pack_panels(p.key_rows(b, hkv), D, nullptr, T, dst);
}

void pv_nonzero(const float* p, int64_t ldp, int64_t rows, int64_t cols, const float* V, int64_t Dv, const int32_t* ids,
                float* o, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float w = p[r * ldp + c];
      if (w == 0.f) continue;
      const float* v = V + (ids != nullptr ? static_cast<int64_t>(ids[c]) : c) * Dv;
      for (int64_t e = 0; e < Dv; ++e) o[r * ldo + e] += w * v[e];
    }
}

int64_t value_pairs_size(const AttentionShape& s) { return (s.T + 1) / 2 * s.Dv; }

void pack_value_pairs(const AttentionParams& p, int64_t b, int64_t hkv, uint32_t* dst) {
  const int64_t T = p.shape.T, Dv = p.shape.Dv;
  const float* V = p.value_rows(b, hkv);
  for (int64_t j = 0; j < T; j += 2)
    kernels().to_pairs(V + j * Dv, j + 1 < T ? V + (j + 1) * Dv : nullptr, Dv, dst + (j / 2) * Dv);
}

namespace {

// The keys a block of rows spans: its widest view [first_min, last_any] and the keys every row may see
// (first_max <= j <= last_all).
struct BlockView {
  int64_t last_any = -1, last_all = 0, first_min = 0, first_max = 0;
};

BlockView block_view(const AttentionParams& p, int64_t b, int64_t hq, const int64_t* row_ids, int64_t rows) {
  BlockView v{-1, p.shape.T, p.shape.T, 0};
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t l = row_last(p, b, hq, row_ids[r]), f = row_first(p, b, row_ids[r]);
    v.last_any = std::max(v.last_any, l);
    v.last_all = std::min(v.last_all, l);
    v.first_min = std::min(v.first_min, f);
    v.first_max = std::max(v.first_max, f);
  }
  return v;
}

// Key ranges [lo, hi) to visit, starting on panel boundaries: all of the view, or the sinks [0, sinks) and the band
// of recent keys (one range when they meet).
void key_ranges(const BlockView& v, const KeyBand& band, int64_t ranges[2][2]) {
  ranges[0][0] = std::min(v.first_min, v.last_any + 1) / kPanel * kPanel;
  ranges[0][1] = v.last_any + 1;
  ranges[1][0] = ranges[1][1] = 0;
  if (band.window < 0) return;
  const int64_t sinks = std::min(band.sinks, v.last_any + 1);
  const int64_t lo = std::max(sinks, v.last_all - band.window + 1);
  ranges[0][0] = 0;
  ranges[0][1] = sinks;
  ranges[1][0] = lo - lo % kPanel;
  ranges[1][1] = v.last_any + 1;
  if (ranges[1][0] < ranges[0][1]) ranges[0][1] = ranges[1][0] = 0;
}

// Row i's scores sr over the tile's columns [j0, j0 + cols) (width with panel padding): columns past the tile, past
// the row's causal limit, before its hard window or outside its band never count; padding and mask added; softcap.
inline void mask_tile_row(const AttentionParams& p, int64_t b, int64_t hq, int64_t i, int64_t j0, int64_t cols,
                          int64_t width, bool partial, const KeyBand& band, const float* key_bias, float* sr) {
  const int64_t last = row_last(p, b, hq, i);
  const int64_t vis = partial ? std::max<int64_t>(0, std::min(cols, last + 1 - j0)) : cols;
  if (p.softcap > 0.f) apply_softcap(sr, vis, p.softcap);
  for (int64_t c = vis; c < width; ++c) sr[c] = kNegInf;
  if (partial) {
    const int64_t hidden = std::min(vis, row_first(p, b, i) - j0);
    for (int64_t c = 0; c < hidden; ++c) sr[c] = kNegInf;
  }
  if (band.window >= 0)
    for (int64_t c = 0; c < vis; ++c) {
      const int64_t j = j0 + c;
      if (j >= band.sinks && j <= last - band.window) sr[c] = kNegInf;
    }
  if (p.key_padding.kind != KeyPaddingKind::kNone)
    for (int64_t c = 0; c < vis; ++c) sr[c] = add_mask(sr[c], key_bias[c]);
  if (p.mask.kind != MaskDtype::kNone) {
    const MaskRow mr = mask_row(p.mask, b, hq, i);
    for (int64_t c = 0; c < vis; ++c) sr[c] = add_mask(sr[c], mr.value(j0 + c));
  }
}

}  // namespace

void attend_tiles(const AttentionParams& p, const PackedHead& head, int64_t b, int64_t hq, const int64_t* row_ids,
                  int64_t rows, const KeyBand& band, float* o, int64_t ldo, OnlineSoftmax* states) {
  const Kernels& kern = kernels();
  const AttentionShape& sh = p.shape;
  const int64_t D = sh.D, Dv = sh.Dv, T = sh.T;
  ExactScratch& sc = t_scratch;
  if (sc.q.size() < static_cast<size_t>(rows * D)) sc.q.resize(rows * D);
  if (sc.s.size() < static_cast<size_t>(rows * kExactBlockK)) sc.s.resize(rows * kExactBlockK);
  if (sc.key_bias.size() < static_cast<size_t>(kExactBlockK)) sc.key_bias.resize(kExactBlockK);

  for (int64_t r = 0; r < rows; ++r) p.scaled_query(b, hq, row_ids[r], sc.q.data() + r * D);
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(o + r * ldo, o + r * ldo + Dv, 0.f);
    states[r] = OnlineSoftmax::empty(o + r * ldo, Dv);
  }
  const BlockView view = block_view(p, b, hq, row_ids, rows);
  const bool windowed = view.first_max > 0;  // a hard window hides some keys of the range from some rows
  const float* v = p.value_rows(b, hq / sh.group());
  const bool has_kpm = p.key_padding.kind != KeyPaddingKind::kNone;
  int64_t ranges[2][2];
  key_ranges(view, band, ranges);

  for (const auto& range : ranges)
    for (int64_t j0 = range[0]; j0 < range[1]; j0 += kExactBlockK) {
      const int64_t cols = std::min<int64_t>(kExactBlockK, range[1] - j0);
      const int64_t npanels = (cols + kPanel - 1) / kPanel;
      const int64_t width = npanels * kPanel;
      float* s = sc.s.data();
      kern.qk_tile(sc.q.data(), D, rows, head.k + (j0 / kPanel) * D * kPanel, D, npanels, s, kExactBlockK);
      if (has_kpm)
        for (int64_t c = 0; c < cols; ++c) sc.key_bias[c] = key_is_real(p.key_padding, T, b, j0 + c) ? 0.f : kNegInf;
      const bool partial = j0 + cols - 1 > view.last_all || band.window >= 0 || (windowed && j0 < view.first_max);
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = s + r * kExactBlockK;
        mask_tile_row(p, b, hq, row_ids[r], j0, cols, width, partial, band, sc.key_bias.data(), sr);
        states[r].add_tile_row(sr, width, kern);
      }
      if (!head.v_finite) {
        pv_nonzero(s, kExactBlockK, rows, cols, v + j0 * Dv, Dv, nullptr, o, ldo);
      } else if (head.v_pairs != nullptr) {
        // j0 is even (ranges start on panels); an odd last column pairs with the next key at weight 0 (V finite).
        kern.pv_tile_bf16(s, kExactBlockK, rows, cols + (cols & 1), head.v_pairs + (j0 / 2) * Dv, Dv, o, ldo);
      } else {
        stream_in(v + j0 * Dv, cols * Dv);
        kern.pv_tile(s, kExactBlockK, rows, cols, v + j0 * Dv, Dv, Dv, o, ldo);
      }
    }
}

void exact_rows(const AttentionParams& p, const PackedHead& head, int64_t b, int64_t hq, const int64_t* row_ids,
                int64_t rows) {
  const AttentionShape& sh = p.shape;
  const int64_t ldo = padded_dv(sh.Dv);
  ExactScratch& sc = t_scratch;
  if (sc.o.size() < static_cast<size_t>(rows * ldo)) sc.o.resize(rows * ldo);
  if (sc.rows.size() < static_cast<size_t>(rows)) sc.rows.resize(rows);
  for (int64_t r0 = 0; r0 < rows; r0 += kExactBlockQ) {
    const int64_t n = std::min(kExactBlockQ, rows - r0);
    auto y = [&](int64_t r) { return p.y + ((b * sh.Hq + hq) * sh.S + row_ids[r0 + r]) * sh.Dv; };
    attend_tiles(p, head, b, hq, row_ids + r0, n, KeyBand{}, sc.o.data(), ldo, sc.rows.data());
    bool finite = true;
    for (int64_t r = 0; r < n; ++r) {
      sc.rows[r].finish(y(r));
      finite &= all_finite(y(r), sh.Dv);
    }
    if (finite || !head.v_finite) continue;
    // A NaN / inf: from Q or K rows these rows see (then the same again), or from V through a weight-0 column.
    PackedHead checked = head;
    checked.v_finite = false;
    attend_tiles(p, checked, b, hq, row_ids + r0, n, KeyBand{}, sc.o.data(), ldo, sc.rows.data());
    for (int64_t r = 0; r < n; ++r) sc.rows[r].finish(y(r));
  }
}

void exact_rows(const AttentionParams& p, const PackedHead& head, int64_t b, int64_t hq, int64_t i0, int64_t i1) {
  ExactScratch& sc = t_scratch;
  sc.ids.resize(static_cast<size_t>(i1 - i0));
  for (int64_t i = i0; i < i1; ++i) sc.ids[i - i0] = i;
  const std::vector<int64_t> ids = sc.ids;  // attend_tiles reuses the scratch
  exact_rows(p, head, b, hq, ids.data(), i1 - i0);
}

}  // namespace iceformer
