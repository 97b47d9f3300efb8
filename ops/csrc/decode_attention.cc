#include "decode_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "exact_attention.h"
#include "host_buffer.h"
#include "masking.h"
#include "parallel.h"
#include "simd.h"
#include "stream_in.h"

namespace iceformer {
namespace {

// Per-thread scratch: the scaled query rows of a head group and one chunk's scores.
struct DecodeScratch {
  std::vector<float> q, s;
};
thread_local DecodeScratch t_decode;

// Partial state of one query row over one chunk: {max, sum, acc[Dv]} (acc not yet divided).
struct PartialView {
  float* base;
  int64_t dv;
  float& max() const { return base[0]; }
  float& sum() const { return base[1]; }
  float* acc() const { return base + 2; }
};

// Scores, softmax partial and value sum of one chunk [j0, j1) for the g * S rows of (b, hkv).
void decode_chunk(const AttentionParams& p, int64_t b, int64_t hkv, int64_t j0, int64_t j1, float* partials) {
  const Kernels& kern = kernels();
  const AttentionShape& sh = p.shape;
  const int64_t D = sh.D, Dv = sh.Dv, g = sh.group(), rows = g * sh.S, cols = j1 - j0;
  const float* K = p.key_rows(b, hkv) + j0 * D;
  const float* V = p.value_rows(b, hkv) + j0 * Dv;
  stream_in(K, cols * D);
  stream_in(V, cols * Dv);
  DecodeScratch& sc = t_decode;
  sc.q.resize(rows * D);
  sc.s.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r)  // row r = (query head hkv * g + r / S, query r % S)
    p.scaled_query(b, hkv * g + r / sh.S, r % sh.S, sc.q.data() + r * D);
  // Rows see [first, last] (a row's window and causal end; keys past a length padding are not real): one score tile
  // over the rows' common span, then each row's outside -inf.
  const bool ranged = p.key_padding.kind == KeyPaddingKind::kNone || p.key_padding.kind == KeyPaddingKind::kLength;
  const int64_t real_end =
      p.key_padding.kind == KeyPaddingKind::kLength ? static_cast<const int64_t*>(p.key_padding.data)[b] : sh.T;
  int64_t lo = j1, hi = j0 - 1;
  for (int64_t i = 0; i < sh.S; ++i) {
    lo = std::min(lo, std::max(row_first(p, b, i), j0));
    hi = std::max(hi, std::min({row_last(p, b, 0, i), j1 - 1, real_end - 1}));
  }
  if (hi >= lo) kern.qk_keys(sc.q.data(), D, rows, K + (lo - j0) * D, D, hi - lo + 1, D, sc.s.data() + (lo - j0), cols);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r % sh.S;
    const int64_t first = std::max(row_first(p, b, i), j0);
    const int64_t last = std::min({row_last(p, b, 0, i), j1 - 1, real_end - 1});
    float* s = sc.s.data() + r * cols;
    if (last < first) {
      std::fill(s, s + cols, kNegInf);
    } else {
      std::fill(s, s + (first - j0), kNegInf);
      std::fill(s + (last + 1 - j0), s + cols, kNegInf);
      // Softcap before the padding holes: tanh would turn a -inf into -softcap.
      if (p.softcap > 0.f) apply_softcap(s + (first - j0), last - first + 1, p.softcap);
      if (!ranged)
        for (int64_t j = first; j <= last; ++j)
          if (!key_is_real(p.key_padding, sh.T, b, j)) s[j - j0] = kNegInf;
    }
    PartialView part{partials + r * (Dv + 2), Dv};
    const float m = kern.max(s, cols);
    part.max() = m;
    std::fill(part.acc(), part.acc() + Dv, 0.f);
    part.sum() = m == kNegInf ? 0.f : kern.exp_sum(s, cols, m);
    if (m == kNegInf) std::fill(s, s + cols, 0.f);
  }
  kern.pv_tile(sc.s.data(), cols, rows, cols, V, Dv, Dv, partials + 2, Dv + 2);
  // A non-finite value in V reaches every row through weight-0 columns too (0 x inf is NaN): redo the chunk skipping
  // zero weights, so that only the rows that see such a key get it.
  bool finite = true;
  for (int64_t r = 0; r < rows; ++r) finite &= all_finite(partials + r * (Dv + 2) + 2, Dv);
  if (finite) return;
  for (int64_t r = 0; r < rows; ++r) std::fill(partials + r * (Dv + 2) + 2, partials + r * (Dv + 2) + 2 + Dv, 0.f);
  pv_nonzero(sc.s.data(), cols, rows, cols, V, Dv, nullptr, partials + 2, Dv + 2);
}

// y of one row from its partials over nchunks chunks, merged in chunk order: max, rescaled sums and accs.
void merge_row(const float* partials, int64_t nchunks, int64_t stride, int64_t dv, float* y) {
  float m = kNegInf;
  for (int64_t c = 0; c < nchunks; ++c) m = std::max(m, partials[c * stride]);
  std::fill(y, y + dv, 0.f);
  if (m == kNegInf) return;  // no visible key: zeros, as the contract says
  float sum = 0.f;
  for (int64_t c = 0; c < nchunks; ++c) {
    const float* part = partials + c * stride;
    if (part[0] == kNegInf) continue;
    const float w = std::exp(part[0] - m);
    sum += w * part[1];
    for (int64_t e = 0; e < dv; ++e) y[e] += w * part[2 + e];
  }
  const float inv = 1.f / sum;
  for (int64_t e = 0; e < dv; ++e) y[e] *= inv;
}

}  // namespace

void decode_group_exact(const AttentionParams& p, int64_t b, int64_t hkv, std::vector<float>* partials) {
  const AttentionShape& sh = p.shape;
  const int64_t g = sh.group(), rows = g * sh.S, row_floats = sh.Dv + 2;
  const int64_t nchunks = (sh.T + kDecodeChunk - 1) / kDecodeChunk;
  partials->resize(static_cast<size_t>(std::max<int64_t>(1, nchunks * rows * row_floats)));
  for (int64_t c = 0; c < nchunks; ++c)
    decode_chunk(p, b, hkv, c * kDecodeChunk, std::min(sh.T, (c + 1) * kDecodeChunk),
                 partials->data() + c * rows * row_floats);
  for (int64_t r = 0; r < rows; ++r)
    merge_row(partials->data() + r * row_floats, nchunks, rows * row_floats, sh.Dv,
              p.y + ((b * sh.Hq + hkv * g + r / sh.S) * sh.S + r % sh.S) * sh.Dv);
}

Status run_decode(const AttentionParams& p, const Parallel& par, const HostAllocator& mem, CallStats* stats) {
  const AttentionShape& sh = p.shape;
  const int64_t g = sh.group(), rows = g * sh.S, row_floats = sh.Dv + 2;
  // Keys any row may see: [0, T) at most; chunks past a batch row's last visible key hold only -inf partials.
  const int64_t nchunks = (sh.T + kDecodeChunk - 1) / kDecodeChunk;
  HostBuffer<float> partials(mem);
  const size_t n = static_cast<size_t>(sh.B * sh.Hkv * nchunks * rows * row_floats);
  if (!partials.allocate(std::max<size_t>(n, 1)))
    return out_of_memory("KnnAttention", "the decode partials", n * 4, sh.text());
  const int64_t per_head = nchunks * rows * row_floats;
  Status ran = parallel_dynamic(par, static_cast<size_t>(sh.B * sh.Hkv * nchunks), "the decode chunks", [&](size_t t) {
    const int64_t bh = static_cast<int64_t>(t) / nchunks, c = static_cast<int64_t>(t) % nchunks;
    const int64_t j0 = c * kDecodeChunk, j1 = std::min(sh.T, j0 + kDecodeChunk);
    decode_chunk(p, bh / sh.Hkv, bh % sh.Hkv, j0, j1, partials.data() + bh * per_head + c * rows * row_floats);
  });
  if (!ran.ok()) return in_call(ran, sh);
  ran = parallel_dynamic(par, static_cast<size_t>(sh.B * sh.Hkv * rows), "the decode merge", [&](size_t t) {
    const int64_t bh = static_cast<int64_t>(t) / rows, r = static_cast<int64_t>(t) % rows;
    const int64_t b = bh / sh.Hkv, hq = (bh % sh.Hkv) * g + r / sh.S, i = r % sh.S;
    merge_row(partials.data() + bh * per_head + r * row_floats, nchunks, rows * row_floats, sh.Dv,
              p.y + ((b * sh.Hq + hq) * sh.S + i) * sh.Dv);
  });
  if (!ran.ok()) return in_call(ran, sh);
  stats->path = PathTaken::kExact;
  stats->reason = "decode: flash decoding over the cache in place";
  return Status();
}

}  // namespace iceformer
