#include "knn_attention.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "epoch_set.h"
#include "knn_search.h"
#include "masking.h"
#include "online_softmax.h"
#include "rng.h"
#include "simd.h"
#include "topk.h"

namespace iceformer {

int64_t candidate_budget(const KnnSettings& s, int64_t visible) {
  int64_t cap = std::numeric_limits<int64_t>::max();
  if (s.max_candidates > 0) cap = s.max_candidates;
  if (s.candidate_fraction > 0.f)
    cap = std::min<int64_t>(cap, static_cast<int64_t>(std::ceil(s.candidate_fraction * static_cast<double>(visible))));
  if (cap == std::numeric_limits<int64_t>::max()) cap = 4 * s.top_k;  // neither cap given
  return std::min<int64_t>(std::max<int64_t>(s.top_k, cap), std::max<int64_t>(visible, 0));
}

namespace {

struct RowScratch {
  SearchScratch search;
  EpochSet selected;
  TopK top;
  std::vector<float> acc;
  std::vector<int32_t> samples;
  std::vector<int32_t> forced, ids, cand_ids;
  std::vector<float> logits, cand_logits, tmp;
};
thread_local RowScratch t_row;



// Chooses the keys query row i attends to: sinks, local window, then the walk's candidates re-scored
// exactly with the best top_k kept. Attended keys are in sc.selected; their logits are added to `os` when
// given. Returns the number of keys scored exactly.
template <typename Visible, typename Score>
int64_t select_keys(const AttentionParams& p, const KnnIndexView& idx, const std::vector<float>& dirs, const float* q,
                    int64_t last, int64_t n_vis, const Visible& visible, const Score& score,
                    RowScratch& sc,
                    std::vector<int32_t>* forced_ids, const std::vector<int32_t>* given) {
  const Kernels& kern = kernels();
  const KnnSettings& ks = p.knn;
  const int64_t D = p.shape.D, T = p.shape.T, L = ks.num_composite, m = ks.num_simple, lists = L * m;
  sc.selected.begin(T);
  forced_ids->clear();
  // Recall insurance: the first num_sink visible keys and the local_window most recent visible keys.
  for (int64_t j = 0, n = 0; j <= last && n < ks.num_sink; ++j)
    if (visible(j)) {
      ++n;
      if (sc.selected.insert(j)) forced_ids->push_back(static_cast<int32_t>(j));
    }
  for (int64_t j = last, w = 0; j >= 0 && w < ks.local_window; --j)
    if (visible(j)) {
      ++w;
      if (sc.selected.insert(j)) forced_ids->push_back(static_cast<int32_t>(j));
    }
  sc.top.reset(ks.top_k);
  if (given != nullptr) {  // low-rank candidates: re-score those not attended already, keep the top_k
    // Exact logits of the candidates not attended already; the top_k by a k-th-largest threshold (O(n)).
    sc.cand_ids.clear();
    sc.cand_logits.clear();
    for (int32_t j : *given)
      if (!sc.selected.contains(j)) sc.cand_ids.push_back(j), sc.cand_logits.push_back(score(j));
    const int64_t n = static_cast<int64_t>(sc.cand_ids.size());
    const int64_t kept = TopK::keep_largest(sc.cand_logits.data(), sc.cand_ids.data(), n, ks.top_k, sc.tmp);
    for (int64_t t = 0; t < kept; ++t) sc.top.push(sc.cand_logits[t], sc.cand_ids[t]);
    for (const auto& [s, j] : sc.top.items()) sc.selected.insert(j);
    return static_cast<int64_t>(forced_ids->size()) + n;
  }
  // DCI retrieval: project T_Q(q) = q / |q| on the directions, walk, re-score exactly, keep the top_k.
  sc.search.qproj.resize(lists);
  const float qn = std::sqrt(kern.dot(q, q, D));
  const float inv_qn = qn > 0.f ? 1.f / qn : 0.f;
  for (int64_t t = 0; t < lists; ++t) sc.search.qproj[t] = kern.dot(q, dirs.data() + t * (D + 1), D) * inv_qn;
  const int64_t budget = candidate_budget(ks, n_vis);
  dci_search(idx, L, m, T, budget, budget * m * 16 + 1024, visible, sc.selected, sc.search);
  for (int32_t j : sc.search.found) sc.top.push(score(j), j);
  for (const auto& [s, j] : sc.top.items()) sc.selected.insert(j);
  return static_cast<int64_t>(forced_ids->size() + sc.search.found.size());
}

}  // namespace

void knn_rows(const AttentionParams& p, const KnnIndexView& idx, const std::vector<float>& dirs,
              const std::vector<std::vector<int32_t>>* cands, const int64_t* real_prefix, int64_t b, int64_t hq,
              int64_t i0, int64_t i1, int32_t* keys_scored) {
  const Kernels& kern = kernels();
  const AttentionShape& sh = p.shape;
  const KnnSettings& ks = p.knn;
  const int64_t D = sh.D, Dv = sh.Dv, T = sh.T, hkv = hq / sh.group();
  const float* K = p.k + (b * sh.Hkv + hkv) * T * D;
  const float* V = p.v + (b * sh.Hkv + hkv) * T * Dv;
  const bool any_mask = p.mask.kind != MaskKind::kNone;  // pure 0/-inf masks only: biases run exact
  RowScratch& sc = t_row;
  if (static_cast<int64_t>(sc.acc.size()) < Dv) sc.acc.resize(Dv);

  for (int64_t i = i0; i < i1; ++i) {
    const float* q = p.q + ((b * sh.Hq + hq) * sh.S + i) * D;
    float* y = p.y + ((b * sh.Hq + hq) * sh.S + i) * Dv;
    const int64_t last = causal_last_key(p, i);
    const MaskRow mrow = any_mask ? mask_row(p.mask, b, hq, i) : MaskRow{};
    auto visible = [&](int64_t j) {
      return j <= last && key_is_real(p.key_padding, T, b, j) && mrow.value(j) != -std::numeric_limits<float>::infinity();
    };
    auto score = [&](int64_t j) { return p.scale * kern.dot(q, K + j * D, D); };
    int64_t n_vis = last >= 0 ? real_prefix[last + 1] : 0;
    if (any_mask && last >= 0) {
      n_vis = 0;
      for (int64_t j = 0; j <= last; ++j) n_vis += visible(j) ? 1 : 0;
    }
    int64_t scored = select_keys(p, idx, dirs, q, last, n_vis, visible, score, sc, &sc.forced,
                                 cands != nullptr ? &(*cands)[i - i0] : nullptr);

    std::fill(sc.acc.begin(), sc.acc.begin() + Dv, 0.f);
    OnlineSoftmax os{-std::numeric_limits<float>::infinity(), 0.f, sc.acc.data(), Dv};
    sc.ids.clear();
    sc.logits.clear();
    for (int32_t j : sc.forced) sc.ids.push_back(j), sc.logits.push_back(score(j));
    for (const auto& [s, j] : sc.top.items()) sc.ids.push_back(j), sc.logits.push_back(s);
    os.add_block(sc.logits.data(), sc.ids.data(), static_cast<int64_t>(sc.ids.size()), V, kern);

    // Tail estimate: sum over unretrieved visible keys U ~ (|U| / s) * sum over s uniform samples of U.
    const int64_t n_rest = n_vis - static_cast<int64_t>(sc.forced.size() + sc.top.items().size());
    if (ks.tail_samples > 0 && n_rest > 0) {
      Rng rng(row_seed(ks.seed, b, hq, i));
      sc.samples.clear();
      const int64_t max_tries = 8 * ks.tail_samples + 64;
      for (int64_t tries = 0; tries < max_tries && static_cast<int64_t>(sc.samples.size()) < ks.tail_samples; ++tries) {
        const int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(last + 1)));
        if (visible(j) && !sc.selected.contains(j)) sc.samples.push_back(static_cast<int32_t>(j));
      }
      if (!sc.samples.empty()) {
        const float w = static_cast<float>(n_rest) / static_cast<float>(sc.samples.size());
        sc.logits.clear();
        for (int32_t j : sc.samples) sc.logits.push_back(score(j));
        os.add_block(sc.logits.data(), sc.samples.data(), static_cast<int64_t>(sc.samples.size()), V, kern, w);
        scored += static_cast<int64_t>(sc.samples.size());
      }
    }
    os.finish(y);
    keys_scored[i - i0] = static_cast<int32_t>(std::min<int64_t>(scored, std::numeric_limits<int32_t>::max()));
  }
}

int64_t select_for_inspection(const AttentionParams& p, const KnnIndexView& idx, const std::vector<float>& dirs,
                              const std::vector<int32_t>* cands, int64_t i, int32_t* out, int64_t cap) {
  const Kernels& kern = kernels();
  const int64_t D = p.shape.D, T = p.shape.T;
  const float* q = p.q + i * D;
  const int64_t last = causal_last_key(p, i);
  auto visible = [&](int64_t j) { return j <= last; };
  auto score = [&](int64_t j) { return p.scale * kern.dot(q, p.k + j * D, D); };
  RowScratch& sc = t_row;
  if (last < 0) return 0;
  select_keys(p, idx, dirs, q, last, last + 1, visible, score, sc, &sc.forced, cands);
  int64_t n = 0;
  for (int32_t j : sc.forced)
    if (n < cap) out[n++] = j;
  for (const auto& [s, j] : sc.top.items())
    if (n < cap) out[n++] = j;
  return n;
}

}  // namespace iceformer
