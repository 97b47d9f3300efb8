// GroupQueryAttention's flow for one call: per-batch lengths -> present cache (copy past unless shared, new rows
// rotated) -> rotated queries [B,Hq,S,D] -> attention over the cache (KnnAttention's driver for prefill, flash
// decoding for short steps) -> output [B,S,Hq*D].
#include "gqa_attention.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "decode_knn.h"
#include "host_buffer.h"
#include "parallel.h"
#include "rotary.h"
#include "stats_log.h"
#include "validate.h"

namespace iceformer {
namespace {

Status bad_length(int64_t b, const std::string& what) {
  return Status::Error("GroupQueryAttention: batch row " + std::to_string(b) + ": " + what);
}

// L_b = seqlens_k[b] + 1 keys after this call, of which past_b were cached before it. The first prompt (S > 1 and
// S = total_sequence_length, as ORT decides) starts at 0 with right padding; later calls append after L_b - S.
Status resolve_lengths(const GqaParams& g, std::vector<int64_t>* len, std::vector<int64_t>* past) {
  const bool shared = g.past_key != nullptr && g.past_key == g.present_key && g.past_value == g.present_value;
  const bool first = g.past_key == nullptr || (g.S > 1 && g.S == g.total);
  len->resize(g.B);
  past->resize(g.B);
  for (int64_t b = 0; b < g.B; ++b) {
    const int64_t L = static_cast<int64_t>(g.seqlens_k[b]) + 1, P = first ? 0 : L - g.S;
    if (L < 1 || L > g.total)
      return bad_length(b, "seqlens_k + 1 = " + std::to_string(L) + ", expected 1.." + std::to_string(g.total) +
                               " (total_sequence_length)");
    if (L > g.present_rows)
      return bad_length(b, "seqlens_k + 1 = " + std::to_string(L) + " exceeds the present buffer's " +
                               std::to_string(g.present_rows) + " rows");
    if (P < 0)
      return bad_length(b, "seqlens_k + 1 = " + std::to_string(L) + " is fewer than the " + std::to_string(g.S) +
                               " new tokens of a call after the first prompt");
    if (!shared && P > g.past_rows)
      return bad_length(b, std::to_string(P) + " cached keys expected, past_key holds " + std::to_string(g.past_rows));
    if (g.rotary && P + g.S > g.cache_rows)
      return bad_length(b, "positions up to " + std::to_string(P + g.S - 1) + " need cos/sin caches of at least " +
                               std::to_string(P + g.S) + " rows, got " + std::to_string(g.cache_rows));
    (*len)[b] = L;
    (*past)[b] = P;
  }
  return Status();
}

// Row s of head h of the new query / key / value (packed or separate inputs).
const float* new_row(const GqaParams& g, int which, int64_t b, int64_t s, int64_t h) {
  if (g.key == nullptr) {  // packed [B,S,(Hq+2Hkv)*D]: Q heads, then K heads, then V heads
    const int64_t head = which == 0 ? h : which == 1 ? g.Hq + h : g.Hq + g.Hkv + h;
    return g.query + ((b * g.S + s) * (g.Hq + 2 * g.Hkv) + head) * g.D;
  }
  const float* base = which == 0 ? g.query : which == 1 ? g.key : g.value;
  const int64_t heads = which == 0 ? g.Hq : g.Hkv;
  return base + ((b * g.S + s) * heads + h) * g.D;
}

void rotate_or_copy(const GqaParams& g, const float* x, float* out, int64_t pos) {
  if (g.rotary)
    rotate_row(x, out, g.D, g.rot_half, g.cos_cache + pos * g.rot_half, g.sin_cache + pos * g.rot_half, g.interleaved);
  else
    std::copy_n(x, g.D, out);
}

std::string shape_text(const GqaParams& g) {
  return "B=" + std::to_string(g.B) + " S=" + std::to_string(g.S) + " Hq=" + std::to_string(g.Hq) +
         " Hkv=" + std::to_string(g.Hkv) + " D=" + std::to_string(g.D) +
         " present rows=" + std::to_string(g.present_rows);
}

// A task failure with the op name and the call's sizes.
Status in_call(const Status& s, const GqaParams& g) {
  return s.wrapped("GroupQueryAttention: ", " (" + shape_text(g) + ")");
}

// present = past's first past_b rows (unless they are the same buffer) and the S new rows at past_b.., zero elsewhere.
Status write_present(const GqaParams& g, const std::vector<int64_t>& past, const Parallel& par) {
  const bool shared = g.past_key != nullptr && g.past_key == g.present_key && g.past_value == g.present_value;
  const int64_t D = g.D, rows = g.present_rows;
  Status ran = parallel_dynamic(par, static_cast<size_t>(g.B * g.Hkv), "the present key/value", [&](size_t t) {
    const int64_t b = static_cast<int64_t>(t) / g.Hkv, h = static_cast<int64_t>(t) % g.Hkv, P = past[b];
    float* pk = g.present_key + static_cast<int64_t>(t) * rows * D;
    float* pv = g.present_value + static_cast<int64_t>(t) * rows * D;
    if (!shared) {
      std::fill(pk, pk + rows * D, 0.f);
      std::fill(pv, pv + rows * D, 0.f);
      if (g.past_key != nullptr) {
        std::copy_n(g.past_key + static_cast<int64_t>(t) * g.past_rows * D, P * D, pk);
        std::copy_n(g.past_value + static_cast<int64_t>(t) * g.past_rows * D, P * D, pv);
      }
    }
    for (int64_t s = 0; s < g.S && P + s < rows; ++s) {
      rotate_or_copy(g, new_row(g, 1, b, s, h), pk + (P + s) * D, P + s);
      std::copy_n(new_row(g, 2, b, s, h), D, pv + (P + s) * D);
    }
  });
  if (!ran.ok()) return in_call(ran, g);
  return Status();
}

Status bad_shape(const char* input, const std::string& expected, const std::vector<int64_t>& got) {
  return Status::Error(std::string("GroupQueryAttention: input ") + input + " must be " + expected + ", got " +
                       dims_str(got));
}

}  // namespace

Status resolve_gqa_shapes(const GqaInputDims& d, GqaParams* g) {
  if (d.query.size() != 3) return bad_shape("query", "[B,S,Hq*D] or [B,S,(Hq+2*Hkv)*D] (rank 3)", d.query);
  if (d.has_key != d.has_value)
    return Status::Error("GroupQueryAttention: key and value must be given together (or neither: packed QKV)");
  g->B = d.query[0];
  g->S = d.query[1];
  const int64_t heads = d.has_key ? g->Hq : g->Hq + 2 * g->Hkv;
  if (d.query[2] % heads != 0 || d.query[2] == 0)
    return bad_shape("query",
                     "a last axis that is a positive multiple of " + std::to_string(heads) +
                         (d.has_key ? " (num_heads)" : " (num_heads + 2 * kv_num_heads, packed QKV)"),
                     d.query);
  g->D = d.query[2] / heads;
  const std::vector<int64_t> kv = {g->B, g->S, g->Hkv * g->D};
  if (d.has_key && d.key != kv) return bad_shape("key", dims_str(kv), d.key);
  if (d.has_value && d.value != kv) return bad_shape("value", dims_str(kv), d.value);
  if (d.has_past_key != d.has_past_value)
    return Status::Error("GroupQueryAttention: past_key and past_value must be given together");
  g->past_rows = 0;
  if (d.has_past_key) {
    if (d.past_key.size() != 4 || d.past_key[0] != g->B || d.past_key[1] != g->Hkv || d.past_key[3] != g->D)
      return bad_shape(
          "past_key",
          "[B,Hkv,P,D] = [" + std::to_string(g->B) + "," + std::to_string(g->Hkv) + ",P," + std::to_string(g->D) + "]",
          d.past_key);
    if (d.past_value != d.past_key)
      return bad_shape("past_value", dims_str(d.past_key) + " (past_key's shape)", d.past_value);
    g->past_rows = d.past_key[2];
  }
  if (d.seqlens_k != std::vector<int64_t>{g->B})
    return bad_shape("seqlens_k", "[B] = [" + std::to_string(g->B) + "]", d.seqlens_k);
  int64_t total_elems = 1;
  for (int64_t x : d.total) total_elems *= x;
  if (total_elems != 1) return bad_shape("total_sequence_length", "one element", d.total);
  if (g->total < g->S)
    return Status::Error("GroupQueryAttention: total_sequence_length = " + std::to_string(g->total) +
                         " is smaller than the " + std::to_string(g->S) + " new tokens");
  g->present_rows = std::max(g->total, g->past_rows);
  if (g->rotary) {
    if (!d.has_cos || !d.has_sin)
      return Status::Error("GroupQueryAttention: do_rotary = 1 needs cos_cache and sin_cache");
    if (d.cos.size() != 2 || d.cos[1] * 2 > g->D || d.cos[1] < 1)
      return bad_shape("cos_cache", "[R, r/2] with r <= D = " + std::to_string(g->D), d.cos);
    if (d.sin != d.cos) return bad_shape("sin_cache", dims_str(d.cos) + " (cos_cache's shape)", d.sin);
    g->cache_rows = d.cos[0];
    g->rot_half = d.cos[1];
  }
  return Status();
}

Status run_gqa(const GqaParams& g, const Parallel& par, const HostAllocator& mem, CallStats* stats) {
  std::vector<int64_t> len, past;
  if (Status s = resolve_lengths(g, &len, &past); !s.ok()) return s;
  if (Status s = write_present(g, past, par); !s.ok()) return s;
  if (g.B == 0 || g.S == 0) return Status();  // empty output; the presents are written

  HostBuffer<float> q(mem), y(mem);
  const size_t n = static_cast<size_t>(g.B * g.Hq * g.S * g.D);
  if (!q.allocate(std::max<size_t>(n, 1)) || !y.allocate(std::max<size_t>(n, 1)))
    return out_of_memory("GroupQueryAttention", "the query and output scratch", 2 * n * 4, shape_text(g));
  Status ran =
      parallel_dynamic(par, static_cast<size_t>(g.B * g.Hq), "the rotated queries", [&](size_t t) {  // [B,Hq,S,D]
        const int64_t b = static_cast<int64_t>(t) / g.Hq, h = static_cast<int64_t>(t) % g.Hq;
        for (int64_t s = 0; s < g.S; ++s)
          rotate_or_copy(g, new_row(g, 0, b, s, h), q.data() + (t * g.S + s) * g.D, past[b] + s);
      });
  if (!ran.ok()) return in_call(ran, g);

  AttentionParams p;
  p.shape = AttentionShape{g.B, g.Hq, g.Hkv, g.S, *std::max_element(len.begin(), len.end()), g.D, g.D};
  p.q = q.data();
  p.k = g.present_key;
  p.v = g.present_value;
  p.kv_rows = g.present_rows;
  p.y = y.data();
  p.key_padding = KeyPaddingView{KeyPaddingKind::kLength, len.data()};
  p.q_offset = past.data();
  p.is_causal = g.causal;
  p.window = g.window;
  p.softcap = g.softcap;
  p.scale = g.scale != 0.f ? g.scale : 1.f / std::sqrt(static_cast<float>(g.D));
  p.knn = g.knn;
  bool prompt = true;  // the call starts the sequences: nothing cached before it
  for (int64_t b = 0; b < g.B; ++b) prompt = prompt && past[b] == 0;
  if (Status st = attend_with_index(p, g.indexes, prompt, par, mem, stats); !st.ok()) return st;
  log_call_stats(p, *stats);
  ran = parallel_dynamic(
      par, static_cast<size_t>(g.B * g.S), "the output transpose", [&](size_t t) {  // [B,Hq,S,D] -> [B,S,Hq*D]
        const int64_t b = static_cast<int64_t>(t) / g.S, s = static_cast<int64_t>(t) % g.S;
        for (int64_t h = 0; h < g.Hq; ++h)
          std::copy_n(y.data() + ((b * g.Hq + h) * g.S + s) * g.D, g.D, g.output + (t * g.Hq + h) * g.D);
      });
  if (!ran.ok()) return in_call(ran, g);
  return Status();
}

}  // namespace iceformer
