#include "union_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "exact_attention.h"
#include "key_marks.h"
#include "knn_common.h"
#include "masking.h"
#include "online_softmax.h"
#include "rng.h"
#include "simd.h"

namespace iceformer {
namespace {

struct UnionScratch {
  KeyMarks in;
  std::vector<int32_t> keys;               // the gathered columns: U, padding, sample, padding
  std::vector<float> kp, q, s, o, m1, s1;  // kp: one tile's K in panels
  std::vector<uint32_t> vw;                // one tile's V as bfloat16 key-pair words (simd.h), where the head has pairs
  std::vector<float> vf;                   // one tile's V rows, where it has not (fp32 P V)
  std::vector<OnlineSoftmax> st;
  std::vector<int64_t> last, seen, fallback;
};
thread_local UnionScratch t_union;

// Gathers the tile of columns [t0, t0 + cols) of sc.keys (t0 on a panel boundary; real keys, then padding): K in
// panels of 16 keys (simd.h layout) into sc.kp, fp32 for exact scores; V as fp32 rows into sc.vf, or where the head
// has V in pairs (tiers with bfloat16 P V) as bfloat16 pairs of keys re-paired from head's pairs of consecutive keys
// into sc.vw (the weights are rounded to bfloat16 too: P V in bfloat16 changed the output of SmolLM2's layers by
// <= 0.09% relative at 8k keys, where bfloat16 Q K^T cost up to 0.8%; docs/decisions.md). Padding columns are zero.
// Tile by tile rather than the whole set first: a tile's K and V (128 KB at D = Dv = 64) are still in L2 when its
// Q K^T and P V read them (the whole set, ~2500 columns, is 1.3 MB).
void gather_tile(const AttentionParams& p, const PackedHead& head, UnionScratch& sc, int64_t b, int64_t hkv, int64_t t0,
                 int64_t cols) {
  const int64_t D = p.shape.D, Dv = p.shape.Dv;
  const int32_t* key = sc.keys.data() + t0;
  const int64_t real = std::find(key, key + cols, kPadKey) - key;
  sc.kp.resize(kExactBlockK * D);
  pack_panels(p.key_rows(b, hkv), D, key, real, sc.kp.data());  // zero up to the panel boundary
  if (!head.v_finite) return;                                   // pv_nonzero reads V in place
  if (head.v_pairs == nullptr) {
    sc.vf.resize(kExactBlockK * Dv);
    gather_values(p.value_rows(b, hkv), Dv, key, cols, sc.vf.data());
    return;
  }
  sc.vw.resize(kExactBlockK / 2 * Dv);
  const Kernels& kern = kernels();
  auto words = [&](int64_t c) {  // the pair words holding column c's values, or nullptr for padding
    return key[c] == kPadKey ? nullptr : head.v_pairs + static_cast<int64_t>(key[c] / 2) * Dv;
  };
  for (int64_t c = 0; c < cols; c += 2) {
    const uint32_t* a = words(c);  // U and the sample are padded apart, so a padded c is followed by padding
    if (a == nullptr)
      std::fill(sc.vw.begin() + c / 2 * Dv, sc.vw.begin() + (c / 2 + 1) * Dv, 0u);
    else
      kern.repair(a, key[c] & 1, words(c + 1), key[c + 1] & 1, Dv, sc.vw.data() + c / 2 * Dv);
  }
}

// Adds columns [c0, c1) of sc.keys (c0 on a panel boundary) to every row's state, each exp(score) counted w times;
// seen[r] += columns row r may see.
void add_columns(const AttentionParams& p, const PackedHead& head, UnionScratch& sc, int64_t b, int64_t hq, int64_t i0,
                 int64_t rows, int64_t c0, int64_t c1, float w) {
  const Kernels& kern = kernels();
  const int64_t D = p.shape.D, Dv = p.shape.Dv, ldo = padded_dv(Dv);
  const bool any_mask = p.mask.kind != MaskDtype::kNone;
  for (int64_t t0 = c0; t0 < c1; t0 += kExactBlockK) {
    const int64_t cols = std::min<int64_t>(kExactBlockK, c1 - t0), npanels = (cols + kPanel - 1) / kPanel;
    const int64_t width = npanels * kPanel;
    const int32_t* key = sc.keys.data() + t0;
    gather_tile(p, head, sc, b, hq / p.shape.group(), t0, cols);
    kern.qk_tile(sc.q.data(), D, rows, sc.kp.data(), D, npanels, sc.s.data(), kExactBlockK);
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = sc.s.data() + r * kExactBlockK;
      // Keys are ascending (padding last): the row's visible columns are a range [lo, vis), lo > 0 only under a
      // hard window.
      const auto [lo, vis] = mask_to_visible(key, width, row_first(p, b, i0 + r), sc.last[r], sr);
      if (any_mask) {
        const MaskRow mr = mask_row(p.mask, b, hq, i0 + r);
        for (int64_t c = 0; c < vis; ++c) sr[c] = add_mask(sr[c], mr.value(key[c]));
      }
      sc.seen[r] += vis - lo;
      sc.st[r].add_tile_row(sr, width, kern, w);
    }
    if (head.v_finite && head.v_pairs != nullptr)
      kern.pv_tile_bf16(sc.s.data(), kExactBlockK, rows, cols, sc.vw.data(), Dv, sc.o.data(), ldo);
    else if (head.v_finite)
      kern.pv_tile(sc.s.data(), kExactBlockK, rows, cols, sc.vf.data(), Dv, Dv, sc.o.data(), ldo);
    else
      pv_nonzero(sc.s.data(), kExactBlockK, rows, cols, p.value_rows(b, hq / p.shape.group()), Dv, key, sc.o.data(),
                 ldo);
  }
}

// Tail samples of a block whose rows together see positions [first_min, last_any].
int64_t block_samples(const KnnSettings& ks, int64_t first_min, int64_t last_any) {
  return ks.tail_samples > 0 ? std::max<int64_t>(0, std::min(ks.tail_samples, last_any + 1 - first_min)) : 0;
}

// The columns of a block: U from c = 0, the tail sample from c_s (both padded to panels), n in all; each sampled
// key stands for h keys.
struct Columns {
  int64_t c_s = 0, n = 0;
  double h = 1.0;
};

// Columns into sc.keys: U, then the tail sample (knn_common.h) of the positions [first_min, last_any] outside U: for
// each row, h times the sum over its visible sampled keys estimates the sum over its visible keys outside U.
Columns choose_columns(const AttentionParams& p, UnionScratch& sc, const std::vector<int32_t>& u, int64_t b, int64_t hq,
                       int64_t i0, int64_t first_min, int64_t last_any) {
  const KnnSettings& ks = p.knn;
  const int64_t T = p.shape.T;
  Columns cols;
  sc.keys.assign(u.begin(), u.end());
  pad_to_panel(sc.keys);
  cols.c_s = static_cast<int64_t>(sc.keys.size());
  if (block_samples(ks, first_min, last_any) > 0) {
    Rng rng(row_seed(ks.seed, b, hq, i0));
    cols.h = systematic_sample(rng, ks.tail_samples, first_min, last_any, [&](int64_t j) {
      if (!sc.in.contains(j) && key_is_real(p.key_padding, T, b, j)) sc.keys.push_back(static_cast<int32_t>(j));
    });
    pad_to_panel(sc.keys);
  }
  cols.n = static_cast<int64_t>(sc.keys.size());
  return cols;
}

// Each row of the block: its output, unless the tail test sends it back to exact (then all such rows together).
void finish_rows(const AttentionParams& p, const PackedHead& head, const std::vector<int32_t>& u, int64_t b, int64_t hq,
                 int64_t i0, int64_t i1, UnionScratch& sc, int32_t* keys_scored) {
  const AttentionShape& sh = p.shape;
  const KnnSettings& ks = p.knn;
  const int64_t rows = i1 - i0, Dv = sh.Dv;
  sc.fallback.clear();
  for (int64_t r = 0; r < rows; ++r) {
    const OnlineSoftmax& st = sc.st[r];
    if (tail_too_heavy(ks.tail_limit, sc.m1[r], sc.s1[r], st.max, st.sum)) {
      sc.fallback.push_back(i0 + r);
      keys_scored[r] = sent_to_exact(visible_span(row_first(p, b, i0 + r), sc.last[r]));
      p.report_keys(b, hq, i0 + r, nullptr, 0, true);
      continue;
    }
    p.report_keys(b, hq, i0 + r, u.data(), static_cast<int64_t>(u.size()), false);
    st.finish(p.y + ((b * sh.Hq + hq) * sh.S + i0 + r) * Dv);
    keys_scored[r] = static_cast<int32_t>(std::min<int64_t>(sc.seen[r], std::numeric_limits<int32_t>::max()));
  }
  if (!sc.fallback.empty()) {
    const std::vector<int64_t> rows_back = sc.fallback;  // exact_rows has its own scratch; keep ours intact
    exact_rows(p, head, b, hq, rows_back.data(), static_cast<int64_t>(rows_back.size()));
  }
}

// Whether the shared set of the k-NN rows [i0, i1) of (b, hq), union_size keys plus the block's tail sample,
// pays: its tiles (rows x keys) must cost less than kMaxUnionCost times the exact path's (the sum over the rows of
// the keys each may see). Otherwise the block goes exact.
constexpr double kMaxUnionCost = 0.7;

bool union_pays(const AttentionParams& p, int64_t b, int64_t hq, int64_t i0, int64_t i1, int64_t union_size) {
  double exact_cost = 0;
  int64_t last_any = -1, first_min = p.shape.T;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t last = row_last(p, b, hq, i), first = row_first(p, b, i);
    exact_cost += static_cast<double>(visible_span(first, last));
    last_any = std::max(last_any, last);
    first_min = std::min(first_min, first);
  }
  const double keys = static_cast<double>(union_size + block_samples(p.knn, first_min, last_any));
  return static_cast<double>(i1 - i0) * keys <= kMaxUnionCost * exact_cost;
}

// U for the k-NN rows [i0, i1) of (b, hq), sorted ascending, real keys only: sinks, windows and the low-rank
// retrieval of every row (lowrank.h). Returned by reference to per-thread scratch (valid until the next call on
// this thread). real_prefix[j] = real keys of batch row b in [0, j).
const std::vector<int32_t>& union_keys(const AttentionParams& p, const LowRankSet& lowrank, const int64_t* real_prefix,
                                       int64_t b, int64_t hq, int64_t i0, int64_t i1) {
  const KnnSettings& ks = p.knn;
  const int64_t T = p.shape.T;
  UnionScratch& sc = t_union;
  int64_t last_min = T, last_any = -1;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t l = row_last(p, b, hq, i);
    last_min = std::min(last_min, l);
    last_any = std::max(last_any, l);
  }
  const int64_t first_min = std::min(row_first(p, b, i0), last_any + 1);  // rows ascend: i0 sees the earliest keys
  sc.in.begin(T);
  auto add = [&](int64_t j) {
    if (key_is_real(p.key_padding, T, b, j)) sc.in.mark(j);
  };
  for (int64_t j = first_min; j < std::min(ks.num_sink, last_any + 1); ++j) add(j);
  if (ks.recent_keys > 0)
    for (int64_t j = std::max<int64_t>({first_min, ks.num_sink, last_min - ks.recent_keys + 1}); j <= last_any; ++j)
      add(j);
  const int64_t budget = candidate_budget(ks, real_prefix[std::max<int64_t>(0, last_any) + 1] - real_prefix[first_min]);
  if (ks.stream_window == 0) lowrank_union(p, lowrank, real_prefix, b, hq, 1, i0, i1, budget, &sc.in);
  return sc.in.collect(last_any + 1);
}

}  // namespace

void union_rows(const AttentionParams& p, const PackedHead& head, const LowRankSet& lowrank, const int64_t* real_prefix,
                int64_t b, int64_t hq, int64_t i0, int64_t i1, int32_t* keys_scored) {
  const int64_t D = p.shape.D, Dv = p.shape.Dv, rows = i1 - i0, ldo = padded_dv(Dv);
  UnionScratch& sc = t_union;
  sc.last.resize(rows);
  int64_t last_any = -1;
  for (int64_t r = 0; r < rows; ++r) {
    sc.last[r] = row_last(p, b, hq, i0 + r);
    last_any = std::max(last_any, sc.last[r]);
  }
  const int64_t first_min = std::min(row_first(p, b, i0), last_any + 1);
  const std::vector<int32_t>& u = union_keys(p, lowrank, real_prefix, b, hq, i0, i1);
  if (!union_pays(p, b, hq, i0, i1, static_cast<int64_t>(u.size()))) {
    // Retrieval spread over most keys (diffuse attention): the exact path is cheaper and exact.
    exact_rows(p, head, b, hq, i0, i1);
    for (int64_t r = 0; r < rows; ++r) {
      keys_scored[r] = sent_to_exact(visible_span(row_first(p, b, i0 + r), sc.last[r]));
      p.report_keys(b, hq, i0 + r, nullptr, 0, true);
    }
    return;
  }

  const Columns cols = choose_columns(p, sc, u, b, hq, i0, first_min, last_any);
  sc.q.resize(rows * D);
  for (int64_t r = 0; r < rows; ++r) p.scaled_query(b, hq, i0 + r, sc.q.data() + r * D);
  sc.s.resize(rows * kExactBlockK);
  sc.o.assign(rows * ldo, 0.f);
  sc.st.resize(rows);
  sc.seen.assign(rows, 0);
  sc.m1.resize(rows);
  sc.s1.resize(rows);
  for (int64_t r = 0; r < rows; ++r) sc.st[r] = OnlineSoftmax::empty(sc.o.data() + r * ldo, Dv);

  add_columns(p, head, sc, b, hq, i0, rows, 0, cols.c_s, 1.f);
  for (int64_t r = 0; r < rows; ++r) sc.m1[r] = sc.st[r].max, sc.s1[r] = sc.st[r].sum;
  if (cols.n > cols.c_s) add_columns(p, head, sc, b, hq, i0, rows, cols.c_s, cols.n, static_cast<float>(cols.h));

  finish_rows(p, head, u, b, hq, i0, i1, sc, keys_scored);
}

}  // namespace iceformer
