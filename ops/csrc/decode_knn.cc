#include "decode_knn.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "decode_attention.h"
#include "exact_attention.h"
#include "key_marks.h"
#include "knn_common.h"
#include "masking.h"
#include "online_softmax.h"
#include "parallel.h"
#include "simd.h"
#include "stream_in.h"

namespace iceformer {
namespace {

struct KnnDecodeScratch {
  KeyMarks in;
  std::vector<int64_t> prefix, last, first;
  int64_t prefix_len = 0;
  std::vector<int32_t> keys;  // U, padding, sample, padding
  // kp, vf: one tile's K in panels and V rows
  std::vector<float> kp, vf, q, s, o, m1, s1, partials;
  std::vector<OnlineSoftmax> st;
};
thread_local KnnDecodeScratch t_kd;

constexpr int64_t kPrefetchAhead = 16;  // gathered rows requested ahead of their hash check
constexpr float kWideShare = 0.25f;     // estimated tail share of some row above which the sample is redrawn wider
constexpr int64_t kWideScale = 4;

enum class Outcome { kKnn, kExact, kStale };

struct GroupResult {
  Outcome outcome = Outcome::kExact;
  int64_t columns = 0;  // key rows read (U and sample), k-NN groups
};

// The group's rows: r = (query head hkv * g + r / S, query r % S); their visible keys [first[r], last[r]].
struct Group {
  const AttentionParams& p;
  int64_t b, hkv, len, rows;
  int64_t first_min, last_min, last_any;
};

// U: sinks, the recent window and every row's low-rank retrieval; into sc.keys (ascending, padded to a panel).
// Returns |U|.
int64_t retrieve(const Group& gr, const DecodeIndex& index, KnnDecodeScratch& sc) {
  const AttentionParams& p = gr.p;
  const KnnSettings& ks = p.knn;
  const int64_t T = p.shape.T, g = p.shape.group();
  // prefix[j] = real keys before j = min(j, L_b). Kept per thread with the invariant prefix[j] = min(j, prefix_len):
  // only the entries past the smaller length change (one or two per step of a growing sequence).
  const int64_t from = std::min<int64_t>(std::min(sc.prefix_len, gr.len), static_cast<int64_t>(sc.prefix.size()));
  sc.prefix.resize(std::max<size_t>(sc.prefix.size(), T + 1));
  for (int64_t j = from; j < static_cast<int64_t>(sc.prefix.size()); ++j) sc.prefix[j] = std::min(j, gr.len);
  sc.prefix_len = gr.len;
  sc.in.begin(T);
  for (int64_t j = gr.first_min; j < std::min(ks.num_sink, gr.last_any + 1); ++j) sc.in.mark(j);
  if (ks.recent_keys > 0)
    for (int64_t j = std::max({gr.first_min, ks.num_sink, gr.last_min - ks.recent_keys + 1}); j <= gr.last_any; ++j)
      sc.in.mark(j);
  const int64_t visible = gr.last_any + 1 - gr.first_min;
  const int64_t budget = std::min(visible, kDecodeBudgetScale * candidate_budget(ks, visible));
  // The group's rows in one scan of its codes (1 MB at 32k keys, rank 32): 1.15x a step against a scan per head.
  if (ks.stream_window == 0)
    lowrank_union(p, index.codes(), sc.prefix.data(), gr.b, gr.hkv * g, g, 0, p.shape.S, budget, &sc.in);
  const std::vector<int32_t>& u = sc.in.collect(gr.last_any + 1);
  sc.keys.assign(u.begin(), u.end());
  pad_to_panel(sc.keys);
  return static_cast<int64_t>(u.size());
}

// Checks and gathers the tile [t0, t0 + cols) of sc.keys (t0 on a panel boundary; real keys, then padding): K in
// panels into sc.kp, V rows into sc.vf, one tile each (128 KB at D = Dv = 64, still in L2 when the tile's Q K^T and
// P V read them; the whole set, ~4700 columns at 16k keys, is 2.4 MB). Every key row read must be the one that was
// coded (a mismatch means the cache changed under the index: false). The rows are scattered over a cache far larger
// than the CPU's caches: each check first asks for the K and V rows kPrefetchAhead columns on (into the next tile
// too), so that many row fetches are in flight instead of one. (Checking, packing and copying V panel by panel in
// one pass measured 0.82x checking a whole set first: the copies then waited on V rows not yet arrived; a tile of
// 256 checks gives them time.)
bool gather_tile(const Group& gr, const DecodeIndex& index, KnnDecodeScratch& sc, int64_t t0, int64_t cols) {
  const AttentionParams& p = gr.p;
  const int64_t D = p.shape.D, Dv = p.shape.Dv, n = static_cast<int64_t>(sc.keys.size());
  const float* K = p.key_rows(gr.b, gr.hkv);
  const float* V = p.value_rows(gr.b, gr.hkv);
  const int32_t* keys = sc.keys.data();
  const int64_t real = std::find(keys + t0, keys + t0 + cols, kPadKey) - (keys + t0);
  const Kernels& kern = kernels();
  for (int64_t c = t0; c < t0 + real; ++c) {
    if (c + kPrefetchAhead < n && keys[c + kPrefetchAhead] != kPadKey) {
      prefetch_row(K + static_cast<int64_t>(keys[c + kPrefetchAhead]) * D, D);
      prefetch_row(V + static_cast<int64_t>(keys[c + kPrefetchAhead]) * Dv, Dv);
    }
    if (!index.row_matches(kern, K + static_cast<int64_t>(keys[c]) * D, D, gr.b, gr.hkv, keys[c])) return false;
  }
  sc.kp.resize(kExactBlockK * D);
  sc.vf.resize(kExactBlockK * Dv);
  pack_panels(K, D, keys + t0, real, sc.kp.data());  // zero up to the panel boundary
  gather_values(V, Dv, keys + t0, cols, sc.vf.data());
  return true;
}

// Adds the columns [c0, c1) of sc.keys (c0 on a panel boundary) to every row's state, each exp(score) counted w
// times, gathering tile by tile; false when a gathered row is not the one coded (stale index).
bool add_columns(const Group& gr, const DecodeIndex& index, KnnDecodeScratch& sc, int64_t c0, int64_t c1, float w) {
  const Kernels& kern = kernels();
  const AttentionParams& p = gr.p;
  const int64_t D = p.shape.D, Dv = p.shape.Dv, ldo = padded_dv(Dv);
  for (int64_t t0 = c0; t0 < c1; t0 += kExactBlockK) {
    const int64_t cols = std::min<int64_t>(kExactBlockK, c1 - t0), npanels = (cols + kPanel - 1) / kPanel;
    const int64_t width = npanels * kPanel;
    const int32_t* key = sc.keys.data() + t0;
    if (!gather_tile(gr, index, sc, t0, cols)) return false;
    kern.qk_tile(sc.q.data(), D, gr.rows, sc.kp.data(), D, npanels, sc.s.data(), kExactBlockK);
    for (int64_t r = 0; r < gr.rows; ++r) {
      float* sr = sc.s.data() + r * kExactBlockK;
      const auto [lo, vis] = mask_to_visible(key, width, sc.first[r], sc.last[r], sr);
      if (p.softcap > 0.f) apply_softcap(sr + lo, vis - lo, p.softcap);
      sc.st[r].add_tile_row(sr, width, kern, w);
    }
    kern.pv_tile(sc.s.data(), kExactBlockK, gr.rows, cols, sc.vf.data(), Dv, Dv, sc.o.data(), ldo);
  }
  return true;
}

struct Sample {
  double h;       // the sampling step: each sampled key stands for h keys
  int64_t count;  // keys drawn (outside U), before the padding
};

// Appends the tail sample to sc.keys: `samples` systematic positions of the group's visible keys outside U (from
// column c_s on, padded to a panel).
Sample draw_sample(const Group& gr, KnnDecodeScratch& sc, int64_t c_s, int64_t samples, uint64_t seed) {
  sc.keys.resize(c_s);
  Rng rng(seed);
  const double h = systematic_sample(rng, samples, gr.first_min, gr.last_any, [&](int64_t j) {
    if (!sc.in.contains(j)) sc.keys.push_back(static_cast<int32_t>(j));
  });
  const int64_t count = static_cast<int64_t>(sc.keys.size()) - c_s;
  pad_to_panel(sc.keys);
  return {h, count};
}

// The largest estimated share of a row's softmax mass outside U (states after U: m1, s1; now: st).
float tail_share(const KnnDecodeScratch& sc, int64_t rows) {
  float worst = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    const float kept = sc.s1[r] * std::exp(sc.m1[r] - sc.st[r].max);
    if (sc.st[r].sum > kept) worst = std::max(worst, 1.f - kept / sc.st[r].sum);
  }
  return worst;
}

GroupResult knn_group(const Group& gr, DecodeIndex& index, KnnDecodeScratch& sc) {
  const AttentionParams& p = gr.p;
  const KnnSettings& ks = p.knn;
  const int64_t Dv = p.shape.Dv, D = p.shape.D, S = p.shape.S, g = p.shape.group(), rows = gr.rows;
  const int64_t visible = gr.last_any + 1 - gr.first_min;
  const int64_t n_u = retrieve(gr, index, sc);
  const int64_t c_s = static_cast<int64_t>(sc.keys.size());
  const int64_t samples = ks.tail_samples > 0 ? std::min(ks.tail_samples, visible) : 0;
  if (static_cast<double>(c_s + samples) > kMaxDecodeShare * static_cast<double>(visible)) return {};

  const int64_t ldo = padded_dv(Dv);
  sc.q.resize(rows * D);
  sc.s.resize(rows * kExactBlockK);
  sc.o.assign(rows * ldo, 0.f);
  sc.st.resize(rows);
  sc.m1.resize(rows);
  sc.s1.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    p.scaled_query(gr.b, gr.hkv * g + r / S, r % S, sc.q.data() + r * D);
    sc.st[r] = OnlineSoftmax::empty(sc.o.data() + r * ldo, Dv);
  }
  if (!add_columns(gr, index, sc, 0, c_s, 1.f)) return {Outcome::kStale, 0};
  for (int64_t r = 0; r < rows; ++r) sc.m1[r] = sc.st[r].max, sc.s1[r] = sc.st[r].sum;
  int64_t read = n_u;  // key rows gathered (both samples where the tail was redrawn)
  if (samples > 0) {
    // The sample's error grows with the share of the mass it estimates: where that share is large (diffuse heads)
    // and the cache is large enough, the sample is redrawn kWideScale times as large.
    const std::vector<float> o_u = sc.o;  // the states after U, to restart the tail from
    const uint64_t seed = row_seed(ks.seed, gr.b, gr.hkv, gr.len);
    for (int64_t scale = 1;; scale *= kWideScale) {
      const Sample drawn = draw_sample(gr, sc, c_s, scale * samples, seed + static_cast<uint64_t>(scale));
      read += drawn.count;
      if (!add_columns(gr, index, sc, c_s, static_cast<int64_t>(sc.keys.size()), static_cast<float>(drawn.h)))
        return {Outcome::kStale, 0};
      for (int64_t r = 0; r < rows; ++r)  // either sample finding too heavy a tail sends the group exact
        if (tail_too_heavy(ks.tail_limit, sc.m1[r], sc.s1[r], sc.st[r].max, sc.st[r].sum)) return {};
      const bool wider =
          scale == 1 && tail_share(sc, rows) > kWideShare &&
          static_cast<double>(c_s + kWideScale * samples) <= kMaxDecodeShare * static_cast<double>(visible);
      if (!wider) break;
      sc.o = o_u;
      for (int64_t r = 0; r < rows; ++r) sc.st[r] = OnlineSoftmax{sc.m1[r], sc.s1[r], sc.o.data() + r * ldo, Dv};
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* y = p.y + ((gr.b * p.shape.Hq + gr.hkv * g + r / S) * S + r % S) * Dv;
    sc.st[r].finish(y);
    if (!all_finite(y, Dv)) return {};  // a non-finite key or value: flash decoding says where it reaches
  }
  return {Outcome::kKnn, read};
}

// One (b, hkv) task: the k-NN group when it sees enough keys, else (or when it declines) flash decoding.
GroupResult decode_group(const AttentionParams& p, DecodeIndex& index, int64_t b, int64_t hkv, bool* rebuilt) {
  const AttentionShape& sh = p.shape;
  const int64_t g = sh.group(), len = static_cast<const int64_t*>(p.key_padding.data)[b];
  KnnDecodeScratch& sc = t_kd;
  // The group's settings where the node gives per-head lists (its heads share one key set; budget 0: exact).
  AttentionParams own = p;
  if (p.knn.per_head()) own.knn = p.knn.for_heads(hkv * g, g);
  Group gr{own, b, hkv, len, g * sh.S, sh.T, sh.T, -1};
  sc.last.resize(gr.rows);
  sc.first.resize(gr.rows);
  for (int64_t r = 0; r < gr.rows; ++r) {
    const int64_t i = r % sh.S;
    sc.last[r] = std::min(row_last(p, b, hkv * g, i), len - 1);
    sc.first[r] = row_first(p, b, i);
    gr.first_min = std::min(gr.first_min, sc.first[r]);
    gr.last_min = std::min(gr.last_min, sc.last[r]);
    gr.last_any = std::max(gr.last_any, sc.last[r]);
  }
  GroupResult res;
  if (own.knn.top_k > 0 && gr.last_any + 1 - gr.first_min >= p.knn.decode_min_keys) {
    *rebuilt = index.refresh(p, b, hkv, p.q_offset[b], len);
    res = knn_group(gr, index, sc);
    if (res.outcome == Outcome::kStale) {
      index.drop(b, hkv);
      *rebuilt = index.refresh(p, b, hkv, p.q_offset[b], len);
    }
  }
  if (res.outcome != Outcome::kKnn) decode_group_exact(p, b, hkv, &sc.partials);
  return res;
}

// p's decode call over the index: per (b, hkv) a k-NN group or flash decoding.
Status run_decode_knn(const AttentionParams& p, DecodeIndex& index, const Parallel& par, CallStats* stats) {
  const AttentionShape& sh = p.shape;
  index.layout(p, p.knn.rank);
  std::vector<GroupResult> res(static_cast<size_t>(sh.B * sh.Hkv));
  std::vector<char> rebuilt(res.size(), 0);
  Status ran = parallel_dynamic(par, res.size(), "the k-NN decode groups", [&](size_t t) {
    bool rb = false;
    res[t] = decode_group(p, index, static_cast<int64_t>(t) / sh.Hkv, static_cast<int64_t>(t) % sh.Hkv, &rb);
    rebuilt[t] = rb;
  });
  if (!ran.ok()) return in_call(ran, sh);
  int64_t knn_groups = 0, columns = 0;
  for (size_t t = 0; t < res.size(); ++t) {
    knn_groups += res[t].outcome == Outcome::kKnn;
    columns += res[t].outcome == Outcome::kKnn ? res[t].columns : 0;
    stats->index_rebuilds += rebuilt[t];
  }
  stats->index_bytes = index.bytes();
  stats->knn_rows = knn_groups * sh.group() * sh.S;
  stats->mean_candidates = knn_groups > 0 ? static_cast<double>(columns) / static_cast<double>(knn_groups) : 0.0;
  stats->path = knn_groups > 0 ? PathTaken::kKnn : PathTaken::kExact;
  stats->reason = knn_groups > 0 ? "decode: k-NN over the persistent index"
                                 : "decode: flash decoding (too few keys, or the k-NN groups declined)";
  return Status();
}

// After a prompt: the index of every (batch, KV head), taken from the prefill's low-rank codes when its k-NN path
// made them (prefill: r > 0), else built from the cache and the prompt's queries (the same result).
Status build_decode_index(const AttentionParams& p, const LowRankSet& prefill, DecodeIndex& index,
                          const Parallel& par) {
  const AttentionShape& sh = p.shape;
  index.layout(p, p.knn.rank);
  const bool adopt = prefill.r == index.codes().r && !prefill.panels.empty();
  const int64_t* len = static_cast<const int64_t*>(p.key_padding.data);
  Status ran = parallel_dynamic(par, static_cast<size_t>(sh.B * sh.Hkv), "the decode index", [&](size_t t) {
    const int64_t b = static_cast<int64_t>(t) / sh.Hkv, hkv = static_cast<int64_t>(t) % sh.Hkv;
    if (adopt)
      index.adopt(p, prefill, b, hkv, len[b]);
    else
      index.build(p, b, hkv, len[b]);
  });
  if (!ran.ok()) return in_call(ran, sh);
  return Status();
}

}  // namespace

Status attend_with_index(const AttentionParams& p, DecodeIndexCache* indexes, bool prompt, const Parallel& par,
                         const HostAllocator& mem, CallStats* stats) {
  const KnnSettings& ks = p.knn;
  const bool knn = indexes != nullptr && ks.top_k > 0 && ks.search == kSearchLowRank && !exact_forced();
  if (p.shape.S >= kMinQueriesForIndex) {
    LowRankSet prefill;
    if (Status st = run_attention(p, par, mem, stats, &prefill); !st.ok()) return st;
    if (!knn || !prompt || p.kv_stride() < ks.decode_min_keys) return Status();
    LentIndex index(*indexes, p.k, true);
    return index.get() != nullptr ? build_decode_index(p, prefill, *index.get(), par) : Status();
  }
  if (knn && p.shape.T >= ks.decode_min_keys) {
    LentIndex index(*indexes, p.k, prompt);
    if (index.get() != nullptr) return run_decode_knn(p, *index.get(), par, stats);
  }
  return run_decode(p, par, mem, stats);
}

bool cache_view(const AttentionParams& p, std::vector<int64_t>* len, std::vector<int64_t>* offset) {
  const AttentionShape& sh = p.shape;
  if (p.mask.kind != MaskDtype::kNone || p.key_padding.kind == KeyPaddingKind::kLength) return false;
  len->assign(sh.B, sh.T);
  offset->assign(sh.B, sh.T - sh.S);
  if (p.key_padding.kind == KeyPaddingKind::kNone) return true;
  for (int64_t b = 0; b < sh.B; ++b) {
    int64_t n = 0;
    while (n < sh.T && key_is_real(p.key_padding, sh.T, b, n)) ++n;
    for (int64_t j = n; j < sh.T; ++j)
      if (key_is_real(p.key_padding, sh.T, b, j)) return false;  // not a prefix (left padding, holes)
    (*len)[b] = n;
  }
  return true;
}

}  // namespace iceformer
