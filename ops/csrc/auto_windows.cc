#include "auto_windows.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention.h"
#include "masking.h"
#include "online_softmax.h"
#include "simd.h"

namespace iceformer {
namespace {

struct ProbeScratch {
  std::vector<float> q, w, o;
};
thread_local ProbeScratch t_probe;

// Whether the call's visibility is causality and a key length only (the probe's rows then see [0, last]).
bool probe_applies(const AttentionParams& p) {
  const KnnSettings& ks = p.knn;
  const bool length_only = p.key_padding.kind == KeyPaddingKind::kNone || p.key_padding.kind == KeyPaddingKind::kLength;
  return ks.auto_window > 0 && ks.head_windows == nullptr && ks.top_k > 0 && p.mask.kind == MaskDtype::kNone &&
         length_only && p.window < 0 && !(p.softcap > 0.f);
}

// Relative error ||o_w - o|| / ||o|| of row i of (b, hq) that sees the keys [0, n): o over all of them, o_w over the
// num_sink first keys and the window's last keys; +inf when the row's scores or values are not finite.
double probe_row(const AttentionParams& p, int64_t b, int64_t hq, int64_t i, int64_t n, ProbeScratch& sc) {
  const Kernels& kern = kernels();
  const AttentionShape& sh = p.shape;
  const int64_t D = sh.D, Dv = sh.Dv, ldo = padded_dv(Dv), hkv = hq / sh.group();
  const int64_t sinks = std::min(p.knn.num_sink, n), w0 = std::max(sinks, n - p.knn.auto_window);
  const float* K = p.key_rows(b, hkv);
  const float* V = p.value_rows(b, hkv);
  sc.q.resize(D);
  sc.w.resize(n);
  sc.o.assign(2 * ldo, 0.f);
  p.scaled_query(b, hq, i, sc.q.data());
  kern.qk_keys(sc.q.data(), D, 1, K, D, n, D, sc.w.data(), n);
  const float m = kern.max(sc.w.data(), n);
  if (!std::isfinite(m)) return std::numeric_limits<double>::infinity();
  const double all = kern.exp_sum(sc.w.data(), n, m);  // w[j] = exp(s_j - m)
  double kept = 0;
  for (int64_t j = 0; j < sinks; ++j) kept += sc.w[j];
  for (int64_t j = w0; j < n; ++j) kept += sc.w[j];
  float* o = sc.o.data();
  float* ow = o + ldo;
  kern.pv_tile(sc.w.data(), n, 1, n, V, Dv, Dv, o, ldo);
  kern.pv_tile(sc.w.data(), n, 1, sinks, V, Dv, Dv, ow, ldo);
  kern.pv_tile(sc.w.data() + w0, n, 1, n - w0, V + w0 * Dv, Dv, Dv, ow, ldo);
  double diff = 0, norm = 0;
  for (int64_t e = 0; e < Dv; ++e) {
    const double full = o[e] / all, win = ow[e] / kept;
    diff += (win - full) * (win - full);
    norm += full * full;
  }
  if (!std::isfinite(diff) || !std::isfinite(norm)) return std::numeric_limits<double>::infinity();
  return norm > 0 ? std::sqrt(diff / norm) : 0.0;
}

}  // namespace

Status probe_windows(const AttentionParams& p, const int64_t* real_prefix, const Parallel& par,
                     std::vector<int64_t>* windows) {
  windows->clear();
  if (!probe_applies(p)) return Status();
  const AttentionShape& sh = p.shape;
  const KnnSettings& ks = p.knn;
  // Per (b, hq): the probe rows' summed error and their count. Rows that see no more than the sinks and the window
  // lose nothing by streaming and say nothing about the head.
  std::vector<double> err(static_cast<size_t>(sh.B * sh.Hq), 0.0);
  std::vector<int64_t> rows(err.size(), 0);
  Status ran = parallel_dynamic(par, err.size(), "the streaming-head probe", [&](size_t t) {
    const int64_t b = static_cast<int64_t>(t) / sh.Hq, hq = static_cast<int64_t>(t) % sh.Hq;
    const int64_t* pre = real_prefix + b * (sh.T + 1);
    const int64_t len = pre[sh.T];  // real keys: a prefix of length len (probe_applies)
    auto seen = [&](int64_t i) { return std::min(row_last(p, b, hq, i), len - 1) + 1; };
    int64_t i0 = knn_first_row(p, pre, b, hq, 0, sh.S);
    while (i0 < sh.S && seen(i0) <= ks.num_sink + ks.auto_window) ++i0;  // causal: seen grows with i
    if (i0 >= sh.S) return;
    const int64_t span = sh.S - i0, n = std::min(kProbeRows, span);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t i = i0 + (n > 1 ? r * (span - 1) / (n - 1) : span - 1);
      err[t] += probe_row(p, b, hq, i, seen(i), t_probe);
      ++rows[t];
    }
  });
  if (!ran.ok()) return ran;
  windows->assign(static_cast<size_t>(sh.Hq), 0);
  for (int64_t hq = 0; hq < sh.Hq; ++hq) {
    double sum = 0;
    int64_t count = 0;
    for (int64_t b = 0; b < sh.B; ++b) sum += err[b * sh.Hq + hq], count += rows[b * sh.Hq + hq];
    if (count > 0 && sum <= static_cast<double>(ks.auto_window_error) * static_cast<double>(count))
      (*windows)[hq] = ks.auto_window;
  }
  return Status();
}

}  // namespace iceformer
