// Plain parameter structs shared by the kernels. No ONNX Runtime types here.
// Shape vocabulary: B batch, Hq query heads, Hkv key/value heads, S queries, T keys, D head dim, Dv value dim.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace iceformer {

// Whether x[0, n) are all finite (input rows and outputs checked for NaN / inf).
inline bool all_finite(const float* x, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(x[i]);
  return ok;
}

struct AttentionShape {
  int64_t B = 0, Hq = 0, Hkv = 0, S = 0, T = 0, D = 0, Dv = 0;
  int64_t group() const { return Hkv > 0 ? Hq / Hkv : 0; }  // query heads per KV head
  // "B=1 Hq=14 Hkv=2 S=4096 T=4096 D=64 Dv=64", for error messages.
  std::string text() const {
    return "B=" + std::to_string(B) + " Hq=" + std::to_string(Hq) + " Hkv=" + std::to_string(Hkv) +
           " S=" + std::to_string(S) + " T=" + std::to_string(T) + " D=" + std::to_string(D) +
           " Dv=" + std::to_string(Dv);
  }
};

enum class MaskDtype { kNone, kBool, kFloat };

// attn_mask broadcast to [B,Hq,S,T]: element (b,h,i,j) sits at b*stride[0] + h*stride[1] + i*stride[2] + j*stride[3]
// (stride 0 on broadcast axes). kBool: nonzero = attend. kFloat: added to the scaled logits.
struct MaskView {
  MaskDtype kind = MaskDtype::kNone;
  const void* data = nullptr;
  int64_t stride[4] = {0, 0, 0, 0};
};

enum class KeyPaddingKind { kNone, kBool, kInt32, kInt64, kLength };

// key_padding_mask [B,T]: nonzero = a real key; kLength: data is int64 [B], the keys j < data[b] are real (a KV
// cache filled to different lengths).
struct KeyPaddingView {
  KeyPaddingKind kind = KeyPaddingKind::kNone;
  const void* data = nullptr;
};

// Settings of the k-NN path (low-rank scoring or Prioritized DCI). The defaults are the contract's (contract.h
// kAttrs; knn_settings.h checks them at compile time).
// The `search` attribute's values: which retrieval finds each query's candidate keys.
constexpr int64_t kSearchLowRank = 0;  // low-rank scoring, shared key sets per block of 64 queries (default)
constexpr int64_t kSearchDci = 1;      // Prioritized DCI, a key set per query

struct KnnSettings {
  int64_t top_k = 128;              // 0: exact attention
  int64_t search = kSearchLowRank;  // candidate retrieval (attribute search)
  int64_t rank = 32;                // low-rank scoring: dimensions kept
  int64_t num_composite = 4;        // L
  int64_t num_simple = 2;           // m
  int64_t max_candidates = 256;     // absolute cap on candidates scored per query (0: derived from fraction)
  float candidate_fraction = 0.f;   // cap as a fraction of the visible keys (0: unused)
  int64_t min_keys = 4096;          // fewer visible keys than this: every key
  int64_t decode_min_keys = 24576;  // decode: a group seeing fewer cached keys than this runs flash decoding
  int64_t recent_keys = 64;         // attribute local_window: most recent visible keys always attended
  int64_t num_sink = 4;             // first keys always attended
  int64_t tail_samples = 1024;      // systematic samples of unretrieved keys estimating the dropped mass
  float tail_limit = 0.5f;          // rows whose estimated unretrieved share of the mass exceeds this go exact
  int64_t seed = 0;
  int64_t auto_window = 2048;       // a prompt's probe makes heads stream over this window (auto_windows.h; 0: off)
  float auto_window_error = 0.01f;  // ... when their probe rows' mean relative error stays within this
  // > 0: a streaming head's rows (attribute head_windows): num_sink sinks and the stream_window keys ending at the
  // block's rows (local_window = stream_window), exactly; nothing retrieved, nothing estimated. Set by for_heads.
  int64_t stream_window = 0;
  // Per query head (attributes head_budgets, head_tail_samples, head_windows): [Hq] values each, or nullptr (the
  // scalars above for every head). Views of the kernel's HeadValues, bound per call.
  const int64_t* head_budgets = nullptr;
  const int64_t* head_tail_samples = nullptr;
  const int64_t* head_windows = nullptr;

  // The settings query heads [h0, h0 + n) run their k-NN rows with (n > 1: decode's group of heads sharing one key
  // set). Heads with a window w > 0 stream; a group of streaming heads only takes the largest window. Otherwise
  // the other heads decide: a budget b retrieves b keys per query (top_k = max_candidates = b, candidate_fraction
  // off; b = 0: exact), the group the largest of theirs (exact if one is 0) and their largest tail sample.
  KnnSettings for_heads(int64_t h0, int64_t n = 1) const {
    KnnSettings k = *this;
    k.head_budgets = k.head_tail_samples = k.head_windows = nullptr;
    int64_t window = 0, live = 0, budget = 0, samples = 0;  // live: the heads that retrieve
    for (int64_t h = h0; h < h0 + n; ++h) {
      if (head_windows != nullptr && head_windows[h] > 0) {
        window = std::max(window, head_windows[h]);
        continue;
      }
      const int64_t b = head_budgets != nullptr ? head_budgets[h] : top_k;
      budget = live == 0 ? b : b == 0 || budget == 0 ? 0 : std::max(budget, b);
      samples = std::max(samples, head_tail_samples != nullptr ? head_tail_samples[h] : tail_samples);
      ++live;
    }
    if (live == 0) {
      k.top_k = k.max_candidates = k.recent_keys = k.stream_window = window;
      k.candidate_fraction = 0.f;
      k.tail_samples = 0;
      return k;
    }
    if (head_budgets != nullptr) {
      k.top_k = k.max_candidates = budget;
      k.candidate_fraction = 0.f;
    }
    k.tail_samples = samples;
    return k;
  }
  bool per_head() const { return head_budgets != nullptr || head_tail_samples != nullptr || head_windows != nullptr; }
};

// The per-head list attributes as a kernel keeps them (empty: not given); bind() points a KnnSettings at them.
struct HeadValues {
  std::vector<int64_t> budgets, tail_samples, windows;
  void bind(KnnSettings* k) const {
    k->head_budgets = budgets.empty() ? nullptr : budgets.data();
    k->head_tail_samples = tail_samples.empty() ? nullptr : tail_samples.data();
    k->head_windows = windows.empty() ? nullptr : windows.data();
  }
};

// Signature of a parallel-for supplied by the host (ONNX Runtime's intra-op pool): runs fn(data, i) for
// i in [0, n), in any order, on any thread, and returns when all are done.
using ParallelForFn = void (*)(void* host, void (*fn)(void*, size_t), size_t n, void* data);

struct Parallel {
  void* host = nullptr;
  ParallelForFn run = nullptr;
};

// Scratch memory from the host (see host_buffer.h); alloc returns nullptr on failure.
struct HostAllocator {
  void* host = nullptr;
  void* (*alloc)(void* host, size_t bytes) = nullptr;
  void (*free)(void* host, void* p) = nullptr;
};

// Receives the key set each k-NN row attends, as the k-NN paths decide it (the introspection entry's result
// handler; the op passes none). keys: the row's set or a superset of it (the block's shared set, to be cut to the
// keys the row may see); all_visible: the row attends every key it may see (its block or the row went exact).
// wants: whether the query rows [i0, i1) of (b, hq) are to be computed at all.
struct KeySetSink {
  void* ctx = nullptr;
  void (*row)(void* ctx, int64_t b, int64_t hq, int64_t i, const int32_t* keys, int64_t n, bool all_visible) = nullptr;
  bool (*wants)(void* ctx, int64_t b, int64_t hq, int64_t i0, int64_t i1) = nullptr;
};

struct AttentionParams {
  AttentionShape shape;
  const float* q = nullptr;  // [B,Hq,S,D]
  const float* k = nullptr;  // [B,Hkv,T,D], or [B,Hkv,kv_rows,D] when kv_rows > T
  const float* v = nullptr;  // [B,Hkv,T,Dv], likewise
  // Rows per (batch, KV head) in the K and V buffers (0: T). A KV cache of capacity kv_rows holds T <= kv_rows rows.
  int64_t kv_rows = 0;
  float* y = nullptr;  // [B,Hq,S,Dv]
  MaskView mask;
  KeyPaddingView key_padding;
  float scale = 1.0f;
  bool is_causal = false;  // bottom-right aligned: query i sees keys j <= i + T - S
  // local_window_size (GroupQueryAttention's meaning): query i sees only keys j > i + T - S - window, the window
  // positions ending at its own; -1: no hard window.
  int64_t window = -1;
  // Per batch row, the position of query row 0 (nullptr: T - S, bottom-right). Causality and the window use it.
  const int64_t* q_offset = nullptr;
  float softcap = 0.f;  // > 0: logits s -> softcap * tanh(s / softcap) (after the scale, before masks)
  KnnSettings knn;
  // Filled by the driver when attn_mask is given: per (b, h, i), the last key the mask leaves visible (-1:
  // none), so that causal-shaped masks (Hugging Face exports pass causality as a [B,1,S,T] mask) skip the
  // masked tail like is_causal does. h is 0 when the mask does not vary by head.
  const int64_t* mask_last = nullptr;
  const KeySetSink* sink = nullptr;  // introspection only

  // Hands row i's key set to the sink, if any (see KeySetSink).
  void report_keys(int64_t b, int64_t hq, int64_t i, const int32_t* keys, int64_t n, bool all_visible) const {
    if (sink != nullptr && sink->row != nullptr) sink->row(sink->ctx, b, hq, i, keys, n, all_visible);
  }

  int64_t kv_stride() const { return kv_rows > shape.T ? kv_rows : shape.T; }
  // The key / value rows of (b, hkv): row j at + j * D (+ j * Dv).
  const float* key_rows(int64_t b, int64_t hkv) const { return k + (b * shape.Hkv + hkv) * kv_stride() * shape.D; }
  const float* value_rows(int64_t b, int64_t hkv) const { return v + (b * shape.Hkv + hkv) * kv_stride() * shape.Dv; }
  // Query row i of (b, hq) times the scale, into dst[0, D): every tile scores (scale q) . k = scale (q . k).
  void scaled_query(int64_t b, int64_t hq, int64_t i, float* dst) const {
    const float* row = q + ((b * shape.Hq + hq) * shape.S + i) * shape.D;
    for (int64_t d = 0; d < shape.D; ++d) dst[d] = row[d] * scale;
  }
};

}  // namespace iceformer
