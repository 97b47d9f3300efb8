// Plain-C entry points for tests and tools (no ONNX Runtime involved): which keys the k-NN path attends to
// for each query of one head, so that recall against the exact top-k can be measured; one kernel with edge cases
// the op rarely reaches.
#include <algorithm>
#include <cstdint>
#include <new>
#include <vector>

#include "attention.h"
#include "exact_attention.h"
#include "dci_attention.h"
#include "dci_index.h"
#include "lowrank.h"
#include "masking.h"
#include "simd.h"
#include "union_attention.h"

#define ICE_EXPORT __attribute__((visibility("default")))

// ints = {top_k, L, m, max_candidates, local_window, num_sink, seed, search, rank, tail_samples, min_keys}. rows: nrows
// ascending query rows in [0, S) to report (only their query blocks are computed). out: [nrows][cap], counts:
// [nrows]. Returns 0, or -1 on invalid settings (message in err, at most err_len bytes).
extern "C" ICE_EXPORT int IceformerKnnSelect(const float* q, const float* k, int64_t S, int64_t T, int64_t D,
                                             int64_t is_causal, const int64_t* ints, float candidate_fraction,
                                             const int64_t* rows, int64_t nrows, int32_t* out, int64_t cap,
                                             int32_t* counts, char* err, int64_t err_len) {
  using namespace iceformer;
  AttentionParams p;
  p.shape = {1, 1, 1, S, T, D, D};
  p.q = q;
  p.k = k;
  p.scale = 1.f;
  p.is_causal = is_causal != 0;
  p.knn.top_k = ints[0];
  p.knn.num_composite = ints[1];
  p.knn.num_simple = ints[2];
  p.knn.max_candidates = ints[3];
  p.knn.local_window = ints[4];
  p.knn.num_sink = ints[5];
  p.knn.seed = ints[6];
  p.knn.search = ints[7];
  p.knn.rank = ints[8];
  p.knn.tail_samples = ints[9];
  p.knn.min_keys = ints[10];
  p.knn.candidate_fraction = candidate_fraction;
  Status st = check_settings(p.knn);
  if (!st.ok()) {
    for (int64_t i = 0; i + 1 < err_len && i < static_cast<int64_t>(st.message().size()); ++i)
      err[i] = st.message()[i], err[i + 1] = 0;
    return -1;
  }
  try {
    const bool dci = p.knn.search == 1;
    const int64_t lists = dci ? p.knn.num_composite * p.knn.num_simple : 0;
    const std::vector<float> dirs = make_directions(p.knn.seed, lists, D);
    DciIndexSet set;
    set.lists = lists;
    set.stride = T;
    set.proj.resize(lists * T);
    set.ids.resize(lists * T);
    set.count.assign(1, 0);
    LowRankSet lr;
    std::vector<int64_t> prefix(T + 1);
    for (int64_t j = 0; j <= T; ++j) prefix[j] = j;
    if (dci) {
      project_keys(p, dirs, 0, 0, &set);
      for (int64_t l = 0; l < lists; ++l) sort_list(&set, 0, l);
    } else {
      init_lowrank(p, p.knn.rank, &lr);
      build_lowrank(p, 0, 0, &lr);
    }
    for (int64_t t = 0; t < nrows;) {
      // The query block of rows[t], and the requested rows [t, t_end) inside it.
      const int64_t i0 = rows[t] / kKnnBlockQ * kKnnBlockQ, i1 = std::min<int64_t>(S, i0 + kKnnBlockQ);
      int64_t t_end = t;
      while (t_end < nrows && rows[t_end] < i1) ++t_end;
      if (dci) {
        for (; t < t_end; ++t)
          counts[t] = static_cast<int32_t>(select_for_inspection(p, set.view(0), dirs, rows[t], out + t * cap, cap));
        continue;
      }
      // Low-rank search, as the op runs it: the block's k-NN rows attend the keys of their shared set U they may
      // see, or every visible key when the block goes exact; rows before the block's first k-NN row report none.
      const int64_t split = knn_first_row(p, prefix.data(), 0, 0, i0, i1);
      const std::vector<int32_t>* u = nullptr;
      bool exact = false;
      if (split < i1) {
        u = &union_keys(p, lr, prefix.data(), 0, 0, split, i1);
        exact = !union_pays(p, 0, 0, split, i1, static_cast<int64_t>(u->size()));
      }
      for (; t < t_end; ++t) {
        const int64_t i = rows[t], last = causal_last_key(p, 0, i);
        int64_t n = 0;
        if (i >= split && exact) {
          for (int64_t j = 0; j <= last && n < cap; ++j) out[t * cap + n++] = static_cast<int32_t>(j);
        } else if (i >= split) {
          for (int32_t j : *u)
            if (j <= last && n < cap) out[t * cap + n++] = j;
        }
        counts[t] = static_cast<int32_t>(n);
      }
    }
  } catch (const std::bad_alloc&) {
    return -1;
  }
  return 0;
}

// The dispatched kth_largest_int kernel on v[0, n) (overwritten): *out = the k-th largest. Returns 0, or -1 when
// not 0 < k <= n or a value is not an integer in (-2^24, 2^24) (the kernel's contract).
extern "C" ICE_EXPORT int IceformerKthLargestInt(float* v, int64_t n, int64_t k, float* out) {
  if (!(k > 0 && k <= n)) return -1;
  for (int64_t i = 0; i < n; ++i)
    if (!(v[i] > -16777216.f && v[i] < 16777216.f) || v[i] != static_cast<float>(static_cast<int32_t>(v[i]))) return -1;
  *out = iceformer::kernels().kth_largest_int(v, n, k);
  return 0;
}

// The dispatched bfloat16 P V kernel (simd.h) on plain arrays, for tests: o[rows x dv] += p[rows x cols] v[cols x dv],
// P and V rounded to bfloat16 (an odd cols is padded with a zero column).
extern "C" ICE_EXPORT int IceformerPvTileBf16(const float* p, int64_t rows, int64_t cols, const float* v, int64_t dv,
                                              float* o) {
  if (rows < 0 || cols < 0 || dv < 0) return -1;
  const int64_t even = cols + cols % 2;
  std::vector<float> pp(static_cast<size_t>(rows * even), 0.f), zero(static_cast<size_t>(dv), 0.f);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(p + r * cols, cols, pp.data() + r * even);
  std::vector<uint32_t> vw(static_cast<size_t>(even / 2 * dv));
  const iceformer::Kernels& kern = iceformer::kernels();
  for (int64_t c = 0; c < even; c += 2)
    kern.to_pairs(v + c * dv, c + 1 < cols ? v + (c + 1) * dv : zero.data(), dv, vw.data() + c / 2 * dv);
  kern.pv_tile_bf16(pp.data(), even, rows, even, vw.data(), dv, o, dv);
  return 0;
}
