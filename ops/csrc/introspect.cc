// Plain-C entry points for tests and tools (no ONNX Runtime involved): which keys the k-NN path attends to
// for each query of one head, so that recall against the exact top-k can be measured (the op's own driver, with a
// key-set sink); kernels with edge cases the op rarely reaches.
#include <algorithm>
#include <cstdint>
#include <new>
#include <string>
#include <vector>

#include "attention.h"
#include "knn_settings.h"
#include "masking.h"
#include "simd.h"
#include "validate.h"

#define ICE_EXPORT __attribute__((visibility("default")))

namespace {

// The sink of one introspection call: rows[0, nrows) ascending; row rows[t]'s keys go to out[t * cap ..].
struct Selection {
  const iceformer::AttentionParams* p;
  const int64_t* rows;
  int64_t nrows, cap;
  int32_t* out;
  int32_t* counts;

  int64_t slot(int64_t i) const {
    const int64_t* at = std::lower_bound(rows, rows + nrows, i);
    return at != rows + nrows && *at == i ? at - rows : -1;
  }
  static bool wants(void* ctx, int64_t, int64_t, int64_t i0, int64_t i1) {
    const Selection& s = *static_cast<const Selection*>(ctx);
    const int64_t* at = std::lower_bound(s.rows, s.rows + s.nrows, i0);
    return at != s.rows + s.nrows && *at < i1;
  }
  // The keys of `keys` (or, all_visible, every key) that row i may see, ascending as given.
  static void row(void* ctx, int64_t, int64_t, int64_t i, const int32_t* keys, int64_t n, bool all_visible) {
    const Selection& s = *static_cast<const Selection*>(ctx);
    const int64_t t = s.slot(i);
    if (t < 0) return;
    const int64_t last = iceformer::row_last(*s.p, 0, 0, i), first = iceformer::row_first(*s.p, 0, i);
    int32_t* dst = s.out + t * s.cap;
    int64_t c = 0;
    if (all_visible) {
      for (int64_t j = std::max<int64_t>(first, 0); j <= last && c < s.cap; ++j) dst[c++] = static_cast<int32_t>(j);
    } else {
      for (int64_t x = 0; x < n && c < s.cap; ++x)
        if (keys[x] >= first && keys[x] <= last) dst[c++] = keys[x];
    }
    s.counts[t] = static_cast<int32_t>(c);
  }
};

void copy_message(const std::string& msg, char* err, int64_t err_len) {
  if (err_len <= 0) return;
  const int64_t n = std::min<int64_t>(err_len - 1, static_cast<int64_t>(msg.size()));
  std::copy_n(msg.data(), n, err);
  err[n] = 0;
}

}  // namespace

// The keys the op's k-NN path attends for query rows `rows` of a single-head call (q [S,D], k [T,D], no masks):
// the op's own driver runs (only the query blocks holding those rows) and its k-NN paths hand each row's set to a
// sink. scale: the logit scale (the tail test depends on it). knn: one value per k-NN attribute in contract order
// (n_knn of them; knn_settings.h). rows: nrows ascending rows in [0, S). out: [nrows][cap], counts: [nrows] (0 for rows
// the op runs exact because they see too few keys, or when the whole call goes exact). Returns 0, or -1 with the
// message in err (at most err_len bytes).
extern "C" ICE_EXPORT int IceformerKnnSelect(const float* q, const float* k, int64_t S, int64_t T, int64_t D,
                                             int64_t is_causal, float scale, const double* knn, int64_t n_knn,
                                             const int64_t* rows, int64_t nrows, int32_t* out, int64_t cap,
                                             int32_t* counts, char* err, int64_t err_len) {
  using namespace iceformer;
  if (n_knn != kNumKnnFields) {
    copy_message("IceformerKnnSelect: expected " + std::to_string(kNumKnnFields) + " k-NN attribute values, got " +
                     std::to_string(n_knn),
                 err, err_len);
    return -1;
  }
  AttentionParams p;
  p.shape = {1, 1, 1, S, T, D, D};
  p.q = q;
  p.k = k;
  p.v = k;  // the values do not change the selection; the output is discarded
  p.scale = scale;
  p.is_causal = is_causal != 0;
  p.knn = knn_settings_from(knn);
  if (Status st = check_settings(p.knn); !st.ok()) {
    copy_message(st.message(), err, err_len);
    return -1;
  }
  std::fill_n(counts, nrows, 0);
  Selection sel{&p, rows, nrows, cap, out, counts};
  KeySetSink sink{&sel, &Selection::row, &Selection::wants};
  p.sink = &sink;
  std::vector<float> y;
  try {
    y.resize(static_cast<size_t>(S * D));
  } catch (const std::bad_alloc&) {
    copy_message("IceformerKnnSelect: out of memory", err, err_len);
    return -1;
  }
  p.y = y.data();
  CallStats stats;
  if (Status st = run_attention(p, Parallel{}, HostAllocator{}, &stats); !st.ok()) {
    copy_message(st.message(), err, err_len);
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
