// Driver: path choice and the task grid. Phase 1 packs each (batch, KV head)'s keys once; phase 2 runs
// (batch, query head, query block) tasks, pulled from an atomic counter so uneven (causal) blocks balance;
// every task writes only its own output rows, so the result is the same at any thread count.
#include "attention.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <chrono>
#include <new>
#include <vector>

#include "auto_windows.h"
#include "exact_attention.h"
#include "host_buffer.h"
#include "dci_attention.h"
#include "dci_index.h"
#include "decode_knn.h"
#include "lowrank.h"
#include "masking.h"
#include "parallel.h"
#include "simd.h"
#include "stats_log.h"
#include "union_attention.h"
#include "validate.h"

namespace iceformer {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

}  // namespace

bool exact_forced() { return std::getenv("ICEFORMER_FORCE_EXACT") != nullptr; }

const char* path_name(PathTaken p) {
  switch (p) {
    case PathTaken::kExact:
      return "exact";
    case PathTaken::kKnn:
      return "knn";
    case PathTaken::kEmpty:
      return "empty";
  }
  return "?";
}

Status run_exact(const AttentionParams& p, const Parallel& par, const HostAllocator& mem, CallStats* stats) {
  const AttentionShape& sh = p.shape;
  const auto t0 = Clock::now();
  HostBuffer<float> packed(mem);
  const int64_t per_head = packed_keys_size(sh);
  if (!packed.allocate(static_cast<size_t>(sh.B * sh.Hkv * per_head)))
    return out_of_memory("KnnAttention", "the packed keys", static_cast<size_t>(sh.B * sh.Hkv * per_head) * 4,
                         sh.text());
  Status ran = parallel_dynamic(par, static_cast<size_t>(sh.B * sh.Hkv), "key packing", [&](size_t t) {
    const int64_t b = static_cast<int64_t>(t) / sh.Hkv, h = static_cast<int64_t>(t) % sh.Hkv;
    pack_keys(p, b, h, packed.data() + t * per_head);
  });
  if (!ran.ok()) return in_call(ran, sh);
  stats->build_ms = ms_since(t0);

  const auto t1 = Clock::now();
  const int64_t nblocks = (sh.S + kExactBlockQ - 1) / kExactBlockQ;
  const int64_t group = sh.group();
  // Heaviest first: under the causal flag the last query blocks see the most keys.
  ran = parallel_dynamic(par, static_cast<size_t>(sh.B * sh.Hq * nblocks), "the exact query blocks", [&](size_t t) {
    const int64_t qb =
        p.is_causal ? nblocks - 1 - static_cast<int64_t>(t) / (sh.B * sh.Hq) : static_cast<int64_t>(t) / (sh.B * sh.Hq);
    const int64_t bh = static_cast<int64_t>(t) % (sh.B * sh.Hq);
    const int64_t b = bh / sh.Hq, hq = bh % sh.Hq;
    const int64_t i0 = qb * kExactBlockQ, i1 = std::min(sh.S, i0 + kExactBlockQ);
    exact_rows(p, PackedHead{packed.data() + (b * sh.Hkv + hq / group) * per_head}, b, hq, i0, i1);
  });
  if (!ran.ok()) return in_call(ran, sh);
  stats->softmax_ms = ms_since(t1);
  stats->path = PathTaken::kExact;
  return Status();
}

// A float attn_mask holding anything but 0 / -inf is a bias top-k cannot honour.
bool mask_is_bias(const AttentionParams& p) {
  if (p.mask.kind != MaskDtype::kFloat) return false;
  const int64_t full[4] = {p.shape.B, p.shape.Hq, p.shape.S, p.shape.T};
  int64_t n = 1;
  for (int a = 0; a < 4; ++a) n *= p.mask.stride[a] ? full[a] : 1;
  const float* m = static_cast<const float*>(p.mask.data);
  for (int64_t t = 0; t < n; ++t)
    if (m[t] != 0.f && !(m[t] <= kMaskedBelow)) return true;
  return false;
}

// Fewest visible keys for which a query takes the k-NN path.
int64_t knn_threshold(const KnnSettings& k) {
  return std::max<int64_t>(k.min_keys, k.top_k + k.recent_keys + k.num_sink + 1);
}

int64_t knn_first_row(const AttentionParams& p, const int64_t* real_prefix, int64_t b, int64_t hq, int64_t i0,
                      int64_t i1) {
  const int64_t threshold = knn_threshold(p.knn);
  int64_t i = i0;
  for (; i < i1; ++i) {
    const int64_t last = row_last(p, b, hq, i), first = row_first(p, b, i);
    if (last >= first && real_prefix[last + 1] - real_prefix[first] >= threshold) break;
  }
  return i;
}

namespace {

// What every k-NN query block reads, built once per call: per (batch, KV head) the packed keys, the low-rank codes
// and, where the tier runs P V in bfloat16 (Kernels::pv_bf16), V as bfloat16 pairs (then every P V of the low-rank
// path runs in bfloat16, its exact rows' too), or the DCI lists (that path stays fp32), and per batch the prefix
// counts of real keys.
struct KnnIndex {
  explicit KnnIndex(const HostAllocator& mem) : packed(mem), v_pairs(mem) {}
  bool dci = false;
  bool pairs = false;  // V as bfloat16 pairs (low-rank path on a tier with bfloat16 P V)
  int64_t lists = 0, per_head = 0, pairs_per_head = 0;
  std::vector<float> dirs;
  DciIndexSet set;
  LowRankSet lowrank;
  HostBuffer<float> packed;
  HostBuffer<uint32_t> v_pairs;
  std::vector<char> v_finite;        // [B][Hkv]
  std::vector<int64_t> real_prefix;  // [B][T + 1]

  PackedHead head(int64_t bkv) const {
    return PackedHead{packed.data() + bkv * per_head, pairs ? v_pairs.data() + bkv * pairs_per_head : nullptr,
                      v_finite[bkv] != 0};
  }
};

Status build_knn_index(const AttentionParams& p, const Parallel& par, KnnIndex* ix) {
  const AttentionShape& sh = p.shape;
  const KnnSettings& ks = p.knn;
  ix->dci = ks.search == kSearchDci;
  ix->pairs = !ix->dci && kernels().pv_bf16;
  ix->lists = ix->dci ? ks.num_composite * ks.num_simple : 0;
  ix->dirs = make_directions(ks.seed, ix->lists, sh.D);
  ix->per_head = packed_keys_size(sh);
  ix->pairs_per_head = ix->pairs ? value_pairs_size(sh) : 0;
  const int64_t lists = ix->lists, per_head = ix->per_head, pairs_per_head = ix->pairs_per_head;
  // Index bytes: DCI projections + ids, per-batch real-key prefix sums, per-row candidate counts, packed keys
  // and V pairs (the low-rank codes are counted by init_lowrank's own growth; they are r/4 bytes per key).
  const size_t index_bytes = static_cast<size_t>(sh.B * sh.Hkv * lists * sh.T) * 8 +
                             static_cast<size_t>(sh.B * (sh.T + 1)) * 8 + static_cast<size_t>(sh.B * sh.Hq * sh.S) * 4 +
                             static_cast<size_t>(sh.B * sh.Hkv * (per_head + pairs_per_head)) * 4;
  try {
    ix->set.lists = lists;
    ix->set.stride = sh.T;
    ix->set.proj.resize(static_cast<size_t>(sh.B * sh.Hkv * lists * sh.T));
    ix->set.ids.resize(static_cast<size_t>(sh.B * sh.Hkv * lists * sh.T));
    ix->set.count.assign(static_cast<size_t>(sh.B * sh.Hkv), 0);
    if (!ix->dci) init_lowrank(p, ks.rank, &ix->lowrank);
    ix->real_prefix.resize(static_cast<size_t>(sh.B * (sh.T + 1)));
    ix->v_finite.assign(static_cast<size_t>(sh.B * sh.Hkv), 1);
    // Packed keys: for the sinks and window tiles, and rows that go exact (early causal, heavily padded).
    if (!ix->packed.allocate(static_cast<size_t>(sh.B * sh.Hkv * per_head)) ||
        !ix->v_pairs.allocate(static_cast<size_t>(sh.B * sh.Hkv * pairs_per_head)))
      throw std::bad_alloc();
  } catch (const std::bad_alloc&) {
    return out_of_memory("KnnAttention", "the k-NN index", index_bytes, sh.text());
  }
  for (int64_t b = 0; b < sh.B; ++b) {
    int64_t* pre = ix->real_prefix.data() + b * (sh.T + 1);
    pre[0] = 0;
    for (int64_t j = 0; j < sh.T; ++j) pre[j + 1] = pre[j] + (key_is_real(p.key_padding, sh.T, b, j) ? 1 : 0);
  }
  Status ran = parallel_dynamic(par, static_cast<size_t>(sh.B * sh.Hkv), "the k-NN index build", [&](size_t t) {
    const int64_t b = static_cast<int64_t>(t) / sh.Hkv, h = static_cast<int64_t>(t) % sh.Hkv;
    if (ix->dci)
      project_keys(p, ix->dirs, b, h, &ix->set);
    else
      build_lowrank(p, b, h, &ix->lowrank);
    pack_keys(p, b, h, ix->packed.data() + t * per_head);
    if (ix->pairs) pack_value_pairs(p, b, h, ix->v_pairs.data() + t * pairs_per_head);
    ix->v_finite[t] = all_finite(p.value_rows(b, h), sh.T * sh.Dv);
  });
  if (!ran.ok()) return ran;
  return parallel_dynamic(par, static_cast<size_t>(sh.B * sh.Hkv * lists), "the DCI list sort", [&](size_t t) {
    sort_list(&ix->set, static_cast<int64_t>(t) / lists, static_cast<int64_t>(t) % lists);
  });
}

// Task t of the (query block, batch, query head) grid: rows whose visible keys are too few for the index to pay
// go exact (a prefix of the block, causal), the rest take the k-NN path. scored: [B][Hq][S] candidates per row.
void knn_block(const AttentionParams& p, const KnnIndex& ix, size_t t, int32_t* scored) {
  const AttentionShape& sh = p.shape;
  const int64_t qb = static_cast<int64_t>(t) / (sh.B * sh.Hq), bh = static_cast<int64_t>(t) % (sh.B * sh.Hq);
  const int64_t b = bh / sh.Hq, hq = bh % sh.Hq, bkv = b * sh.Hkv + hq / sh.group();
  const int64_t i0 = qb * kKnnBlockQ, i1 = std::min(sh.S, i0 + kKnnBlockQ);
  if (p.sink != nullptr && p.sink->wants != nullptr && !p.sink->wants(p.sink->ctx, b, hq, i0, i1)) return;
  const int64_t* pre = ix.real_prefix.data() + b * (sh.T + 1);
  const PackedHead head = ix.head(bkv);
  const int64_t split = knn_first_row(p, pre, b, hq, i0, i1);
  // The head's own settings where the node gives per-head lists; budget 0: the head is exact.
  AttentionParams own = p;
  if (p.knn.per_head()) own.knn = p.knn.for_heads(hq);
  const int64_t exact_to = own.knn.top_k == 0 ? i1 : split;
  if (exact_to > i0) exact_rows(p, head, b, hq, i0, exact_to);
  if (exact_to == i1) return;
  int32_t* row_scored = scored + (b * sh.Hq + hq) * sh.S + split;
  if (ix.dci && own.knn.stream_window == 0)  // a streaming head's rows need no index
    dci_rows(own, head, ix.set.view(bkv), ix.dirs, pre, b, hq, split, i1, row_scored);
  else
    union_rows(own, head, ix.lowrank, pre, b, hq, split, i1, row_scored);
}

// Candidates per k-NN row (scored: c >= 0 scored c keys; -1 not a k-NN row; c < -1 fell back to exact after the
// tail estimate, with -c - 1 visible keys): their count, mean, 99th percentile and the fallbacks.
void summarise_scored(const std::vector<int32_t>& scored, CallStats* stats) {
  std::vector<int32_t> used;
  used.reserve(scored.size());
  for (int32_t c : scored) {
    if (c < -1) ++stats->fallback_rows;
    if (c >= 0 || c < -1) used.push_back(c >= 0 ? c : -c - 1);
  }
  if (!used.empty()) {
    double sum = 0;
    for (int32_t c : used) sum += c;
    stats->mean_candidates = sum / static_cast<double>(used.size());
    const size_t k99 = std::min(used.size() - 1, static_cast<size_t>(0.99 * static_cast<double>(used.size())));
    std::nth_element(used.begin(), used.begin() + k99, used.end());
    stats->p99_candidates = used[k99];
  }
  stats->knn_rows = static_cast<int64_t>(used.size());
}

}  // namespace

Status run_knn(const AttentionParams& p, const Parallel& par, const HostAllocator& mem, CallStats* stats,
               LowRankSet* keep_codes) {
  const AttentionShape& sh = p.shape;
  const auto t0 = Clock::now();
  KnnIndex ix(mem);
  std::vector<int32_t> scored;
  try {
    scored.assign(static_cast<size_t>(sh.B * sh.Hq * sh.S), -1);
  } catch (const std::bad_alloc&) {
    return out_of_memory("KnnAttention", "the per-row candidate counts", static_cast<size_t>(sh.B * sh.Hq * sh.S) * 4,
                         sh.text());
  }
  Status ran = build_knn_index(p, par, &ix);
  if (!ran.ok()) return ran.kind() == Status::Kind::kOutOfMemory ? ran : in_call(ran, sh);
  stats->build_ms = ms_since(t0);

  const auto t1 = Clock::now();
  // Heads the probe finds local stream for this call (auto_windows.h); with none, p runs as given.
  std::vector<int64_t> windows;
  ran = probe_windows(p, ix.real_prefix.data(), par, &windows);
  if (!ran.ok()) return in_call(ran, sh);
  stats->stream_heads = std::count_if(windows.begin(), windows.end(), [](int64_t w) { return w > 0; });
  AttentionParams run = p;
  if (stats->stream_heads > 0) run.knn.head_windows = windows.data();
  const int64_t nblocks = (sh.S + kKnnBlockQ - 1) / kKnnBlockQ;
  ran = parallel_dynamic(par, static_cast<size_t>(sh.B * sh.Hq * nblocks), "the k-NN query blocks",
                         [&](size_t t) { knn_block(run, ix, t, scored.data()); });
  if (!ran.ok()) return in_call(ran, sh);
  stats->search_ms = ms_since(t1);
  summarise_scored(scored, stats);
  stats->path = PathTaken::kKnn;
  if (keep_codes != nullptr && !ix.dci) *keep_codes = std::move(ix.lowrank);
  return Status();
}

// Per (b, h, i): the last key the mask leaves visible (scanning back from the causal limit).
Status compute_mask_last(const AttentionParams& p, const Parallel& par, HostBuffer<int64_t>* out) {
  const AttentionShape& sh = p.shape;
  const int64_t heads = p.mask.stride[1] ? sh.Hq : 1;
  if (!out->allocate(static_cast<size_t>(sh.B * sh.Hq * sh.S)))
    return out_of_memory("KnnAttention", "the mask's row limits", static_cast<size_t>(sh.B * sh.Hq * sh.S) * 8,
                         sh.text());
  Status ran = parallel_dynamic(par, static_cast<size_t>(sh.B * heads), "the mask row limits", [&](size_t t) {
    const int64_t b = static_cast<int64_t>(t) / heads, h = static_cast<int64_t>(t) % heads;
    for (int64_t i = 0; i < sh.S; ++i) {
      const MaskRow mr = mask_row(p.mask, b, h, i);
      int64_t j = causal_last_key(p, b, i);
      while (j >= 0 && mr.value(j) == kNegInf) --j;
      (*out)[static_cast<size_t>((b * sh.Hq + h) * sh.S + i)] = j;
    }
  });
  if (!ran.ok()) return in_call(ran, sh);
  return Status();
}

Status run_attention(const AttentionParams& params, const Parallel& par, const HostAllocator& mem, CallStats* stats,
                     LowRankSet* keep_codes) {
  const auto t0 = Clock::now();
  AttentionParams p = params;
  const AttentionShape& sh = p.shape;
  *stats = CallStats{};
  if (sh.B == 0 || sh.Hq == 0 || sh.S == 0 || sh.Dv == 0) {
    stats->path = PathTaken::kEmpty;
    stats->reason = "empty output";
    return Status();
  }
  if (sh.T == 0) {  // no key visible anywhere: zeros by contract
    std::fill(p.y, p.y + sh.B * sh.Hq * sh.S * sh.Dv, 0.f);
    stats->path = PathTaken::kEmpty;
    stats->reason = "no keys (T = 0)";
    return Status();
  }
  // A key_padding_mask with every key real (what the rewriter passes when it has none) is no mask.
  if (p.key_padding.kind != KeyPaddingKind::kNone) {
    bool all_real = true;
    for (int64_t b = 0; b < sh.B && all_real; ++b)
      for (int64_t j = 0; j < sh.T && all_real; ++j) all_real = key_is_real(p.key_padding, sh.T, b, j);
    if (all_real) p.key_padding.kind = KeyPaddingKind::kNone;
  }
  HostBuffer<int64_t> mask_last(mem);
  if (p.mask.kind != MaskDtype::kNone) {
    if (Status s = compute_mask_last(p, par, &mask_last); !s.ok()) return s;
    p.mask_last = mask_last.data();
  }
  // Path choice. k-NN needs top_k > 0, no bias mask, enough queries to pay for the index, and some query
  // seeing at least knn_threshold keys.
  const KnnSettings& ks = p.knn;
  const char* why = nullptr;
  if (ks.top_k == 0) {
    why = "top_k = 0";
  } else if (sh.S < kMinQueriesForIndex) {
    why = "too few queries for an index";
  } else if (sh.T < knn_threshold(ks)) {
    why = "too few keys (T < max(min_keys, top_k + local_window + num_sink + 1))";
  } else if (p.window >= 0 && p.window < knn_threshold(ks)) {
    why = "hard window smaller than the k-NN threshold (local_window_size < max(min_keys, ...))";
  } else if (mask_is_bias(p)) {
    why = "float attn_mask is a bias";
  } else if (p.softcap > 0.f) {
    why = "softcap (the k-NN path does not cap logits)";
  }
  Status st;
  if (why != nullptr || exact_forced()) {
    st = run_exact(p, par, mem, stats);
    stats->reason = why != nullptr ? why : "ICEFORMER_FORCE_EXACT";
  } else {
    st = run_knn(p, par, mem, stats, keep_codes);
    stats->reason = "top_k search";
  }
  stats->total_ms = ms_since(t0);
  return st;
}

Status run_knn_attention(const AttentionParams& p, const Parallel& par, const HostAllocator& mem,
                         DecodeIndexCache* indexes) {
  CallStats stats;
  std::vector<int64_t> len, offset;
  if (indexes != nullptr && cache_view(p, &len, &offset)) {
    AttentionParams c = p;
    c.key_padding = KeyPaddingView{KeyPaddingKind::kLength, len.data()};
    c.q_offset = offset.data();
    if (Status s = attend_with_index(c, indexes, p.is_causal && p.shape.S == p.shape.T, par, mem, &stats); !s.ok())
      return s;
  } else if (Status s = run_attention(p, par, mem, &stats); !s.ok()) {
    return s;
  }
  log_call_stats(p, stats);
  return Status();
}

}  // namespace iceformer
