#include "dci_attention.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <utility>

#include "epoch_set.h"
#include "exact_attention.h"
#include "dci_search.h"
#include "masking.h"
#include "online_softmax.h"
#include "rng.h"
#include "simd.h"
#include "topk.h"

namespace iceformer {

namespace {

struct RowScratch {
  SearchScratch search;
  EpochSet chosen;  // retrieved top_k keys of the current row
  EpochSet none;    // always empty: DCI excludes forced keys by position instead
  TopK top;
  std::vector<float> band_o;  // per row: accumulator of the sinks + window part
  std::vector<OnlineSoftmax> band;
  std::vector<int32_t> ids, samples;
  std::vector<int64_t> fallback;  // rows to redo exactly
  std::vector<int64_t> rows;
  std::vector<float> logits;
};
thread_local RowScratch t_row;

// Sinks (j < num_sink) and the local window (last - local_window < j <= last) are attended by every row.
inline bool is_forced(const KnnSettings& ks, int64_t last, int64_t j) {
  return j < ks.num_sink || j > last - ks.recent_keys;
}

// Retrieves the row's candidates by the DCI walk, scores them exactly and keeps the top_k in sc.top / sc.chosen.
// Returns the number of candidates scored.
template <typename Visible, typename Score>
int64_t retrieve(const AttentionParams& p, const DciIndexView& idx, const std::vector<float>& dirs, const float* q,
                 int64_t last, int64_t n_vis, const Visible& visible, const Score& score, RowScratch& sc) {
  const KnnSettings& ks = p.knn;
  const int64_t T = p.shape.T;
  auto candidate = [&](int64_t j) { return visible(j) && !is_forced(ks, last, j); };
  const Kernels& kern = kernels();
  const int64_t D = p.shape.D, L = ks.num_composite, m = ks.num_simple, lists = L * m;
  sc.search.qproj.resize(lists);
  const float qn = std::sqrt(kern.dot(q, q, D));
  const float inv_qn = qn > 0.f ? 1.f / qn : 0.f;  // T_Q(q) = q / |q|
  for (int64_t t = 0; t < lists; ++t) sc.search.qproj[t] = kern.dot(q, dirs.data() + t * (D + 1), D) * inv_qn;
  const int64_t budget = candidate_budget(ks, n_vis);
  sc.none.begin(T);
  dci_search(idx, L, m, T, budget, budget * m * 16 + 1024, candidate, sc.none, sc.search);
  sc.ids.clear();
  for (int32_t j : sc.search.found)
    if (candidate(j)) sc.ids.push_back(j);
  const int64_t n = static_cast<int64_t>(sc.ids.size());
  sc.logits.resize(n);
  score(sc.ids.data(), n, sc.logits.data());
  const int64_t kept = TopK::keep_largest(sc.logits.data(), sc.ids.data(), n, ks.top_k, kern);
  sc.top.reset(ks.top_k);
  sc.chosen.begin(T);
  for (int64_t t = 0; t < kept; ++t) sc.top.push(sc.logits[t], sc.ids[t]), sc.chosen.insert(sc.ids[t]);
  return n;
}

}  // namespace

// Sinks and local window of the rows [i0, i1) at once, by tiles of the exact kernel, into sc.band (one running
// softmax per row, accumulating into sc.band_o); empty states when there is no band.
void attend_band(const AttentionParams& p, const PackedHead& head, int64_t b, int64_t hq, int64_t i0, int64_t i1,
                 RowScratch& sc) {
  const KnnSettings& ks = p.knn;
  const int64_t rows = i1 - i0, Dv = p.shape.Dv, ldo = padded_dv(Dv);
  if (sc.band_o.size() < static_cast<size_t>(rows * ldo)) sc.band_o.resize(rows * ldo);
  if (sc.band.size() < static_cast<size_t>(rows)) sc.band.resize(rows);
  if (ks.num_sink > 0 || ks.recent_keys > 0) {
    sc.rows.resize(rows);
    for (int64_t r = 0; r < rows; ++r) sc.rows[r] = i0 + r;
    attend_tiles(p, head, b, hq, sc.rows.data(), rows, KeyBand{ks.num_sink, ks.recent_keys}, sc.band_o.data(), ldo,
                 sc.band.data());
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(sc.band_o.begin() + r * ldo, sc.band_o.begin() + r * ldo + Dv, 0.f);
    sc.band[r] = OnlineSoftmax::empty(sc.band_o.data() + r * ldo, Dv);
  }
}

// A row's visible keys (up to `last`), and how many of them the sinks and window already cover.
template <typename Visible>
std::pair<int64_t, int64_t> visible_counts(const AttentionParams& p, const int64_t* real_prefix, int64_t last,
                                           bool plain, bool any_mask, const Visible& visible) {
  const KnnSettings& ks = p.knn;
  int64_t n_vis = 0, n_forced = 0;
  if (last < 0) return {0, 0};
  if (plain) {
    const int64_t lo = std::max<int64_t>(0, last - ks.recent_keys + 1);
    return {last + 1, lo <= ks.num_sink ? last + 1 : std::min(ks.num_sink, last + 1) + (last + 1 - lo)};
  }
  n_vis = real_prefix[last + 1];
  if (any_mask || p.window >= 0) {
    n_vis = 0;
    for (int64_t j = 0; j <= last; ++j) n_vis += visible(j) ? 1 : 0;
  }
  for (int64_t j = 0; j <= last && j < ks.num_sink; ++j) n_forced += visible(j) ? 1 : 0;
  for (int64_t j = std::max(ks.num_sink, last - ks.recent_keys + 1); j <= last; ++j) n_forced += visible(j) ? 1 : 0;
  return {n_vis, n_forced};
}

// Tail estimate of the sum over the row's unretrieved visible keys: the tail sample (knn_common.h) of [0, last],
// each sampled key weighted by the step, added to os. Returns whether the estimated share is too heavy (the row
// then goes exact). *scored counts the sampled keys.
template <typename Visible, typename Score>
bool tail_estimate(const AttentionParams& p, int64_t b, int64_t hq, int64_t i, int64_t last, const Visible& visible,
                   const Score& score, const float* V, OnlineSoftmax& os, RowScratch& sc, int64_t* scored) {
  const KnnSettings& ks = p.knn;
  if (ks.tail_samples <= 0) return false;
  Rng rng(row_seed(ks.seed, b, hq, i));
  sc.samples.clear();
  const double h = systematic_sample(rng, ks.tail_samples, 0, last, [&](int64_t j) {
    if (visible(j) && !is_forced(ks, last, j) && !sc.chosen.contains(j)) sc.samples.push_back(static_cast<int32_t>(j));
  });
  if (sc.samples.empty()) return false;
  const int64_t n = static_cast<int64_t>(sc.samples.size());
  sc.logits.resize(n);
  score(sc.samples.data(), n, sc.logits.data());
  const float m1 = os.max, s1 = os.sum;  // the retrieved part, before the tail
  os.add(sc.logits.data(), sc.samples.data(), n, V, kernels(), static_cast<float>(h));
  *scored += n;
  return tail_too_heavy(ks.tail_limit, m1, s1, os.max, os.sum);
}

// The row's key set for the sink: its visible sinks and window, then its retrieved top_k.
template <typename Visible>
void report_row(const AttentionParams& p, int64_t b, int64_t hq, int64_t i, int64_t last, const Visible& visible,
                RowScratch& sc) {
  sc.ids.clear();
  for (int64_t j = 0; j <= last; ++j)
    if (is_forced(p.knn, last, j) && visible(j)) sc.ids.push_back(static_cast<int32_t>(j));
  for (const auto& [s, j] : sc.top.items()) sc.ids.push_back(j);
  p.report_keys(b, hq, i, sc.ids.data(), static_cast<int64_t>(sc.ids.size()), false);
}

void dci_rows(const AttentionParams& p, const PackedHead& head, const DciIndexView& idx, const std::vector<float>& dirs,
              const int64_t* real_prefix, int64_t b, int64_t hq, int64_t i0, int64_t i1, int32_t* keys_scored) {
  const Kernels& kern = kernels();
  const AttentionShape& sh = p.shape;
  const int64_t D = sh.D, Dv = sh.Dv, T = sh.T, hkv = hq / sh.group();
  const float* K = p.key_rows(b, hkv);
  const float* V = p.value_rows(b, hkv);
  const bool any_mask = p.mask.kind != MaskDtype::kNone;  // pure 0/-inf masks only: biases run exact
  const bool plain = !any_mask && p.key_padding.kind == KeyPaddingKind::kNone && p.window < 0;
  RowScratch& sc = t_row;

  attend_band(p, head, b, hq, i0, i1, sc);

  sc.fallback.clear();
  for (int64_t i = i0; i < i1; ++i) {
    const float* q = p.q + ((b * sh.Hq + hq) * sh.S + i) * D;
    float* y = p.y + ((b * sh.Hq + hq) * sh.S + i) * Dv;
    const int64_t last = row_last(p, b, hq, i), first = row_first(p, b, i);
    const MaskRow mrow = any_mask ? mask_row(p.mask, b, hq, i) : MaskRow{};
    auto visible = [&](int64_t j) {
      return j <= last && j >= first && key_is_real(p.key_padding, T, b, j) && mrow.value(j) != kNegInf;
    };
    auto score = [&](const int32_t* ids, int64_t n, float* out) { kern.gather_dot(q, K, D, ids, n, D, p.scale, out); };
    const auto [n_vis, n_forced] = visible_counts(p, real_prefix, last, plain, any_mask, visible);
    int64_t scored = n_forced;
    OnlineSoftmax& os = sc.band[i - i0];
    scored += retrieve(p, idx, dirs, q, last, n_vis, visible, score, sc);
    const int64_t kept = static_cast<int64_t>(sc.top.items().size());
    sc.ids.clear();
    sc.logits.clear();
    for (const auto& [s, j] : sc.top.items()) sc.ids.push_back(j), sc.logits.push_back(s);
    os.add(sc.logits.data(), sc.ids.data(), kept, V, kern);

    if (n_vis - n_forced - kept > 0 && tail_estimate(p, b, hq, i, last, visible, score, V, os, sc, &scored)) {
      sc.fallback.push_back(i);
      keys_scored[i - i0] = sent_to_exact(n_vis);
      p.report_keys(b, hq, i, nullptr, 0, true);
      continue;
    }
    if (p.sink != nullptr) report_row(p, b, hq, i, last, visible, sc);
    os.finish(y);
    keys_scored[i - i0] = static_cast<int32_t>(std::min<int64_t>(scored, std::numeric_limits<int32_t>::max()));
  }
  // Rows whose tail was too heavy: exact attention, together.
  if (!sc.fallback.empty()) exact_rows(p, head, b, hq, sc.fallback.data(), static_cast<int64_t>(sc.fallback.size()));
}

}  // namespace iceformer
