#include "validate.h"

#include "knn_settings.h"

#include <sstream>

namespace iceformer {

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

Status resolve_shape(const std::vector<int64_t>& q, const std::vector<int64_t>& k, const std::vector<int64_t>& v,
                     AttentionShape* out) {
  auto rank4 = [](const char* name, const char* letters, const std::vector<int64_t>& d) -> Status {
    if (d.size() != 4)
      return Status::Error(std::string("KnnAttention: input ") + name + " must have rank 4 " + letters + ", got rank " +
                           std::to_string(d.size()) + " shape " + dims_str(d));
    for (int64_t x : d)
      if (x < 0)
        return Status::Error(std::string("KnnAttention: input ") + name + " has a negative dim " + dims_str(d));
    return Status();
  };
  if (Status s = rank4("Q", "[B,Hq,S,D]", q); !s.ok()) return s;
  if (Status s = rank4("K", "[B,Hkv,T,D]", k); !s.ok()) return s;
  if (Status s = rank4("V", "[B,Hkv,T,Dv]", v); !s.ok()) return s;
  auto mismatch = [&](const char* what, const char* a, int64_t x, const char* b2, int64_t y) {
    std::ostringstream o;
    o << "KnnAttention: " << what << " mismatch: " << a << "=" << x << " but " << b2 << "=" << y << " (Q "
      << dims_str(q) << ", K " << dims_str(k) << ", V " << dims_str(v) << ")";
    return Status::Error(o.str());
  };
  if (k[0] != q[0]) return mismatch("batch", "Q.B", q[0], "K.B", k[0]);
  if (v[0] != q[0]) return mismatch("batch", "Q.B", q[0], "V.B", v[0]);
  if (v[1] != k[1]) return mismatch("KV head count", "K.Hkv", k[1], "V.Hkv", v[1]);
  if (v[2] != k[2]) return mismatch("key count", "K.T", k[2], "V.T", v[2]);
  if (k[3] != q[3]) return mismatch("head dim", "Q.D", q[3], "K.D", k[3]);
  if (k[1] < 1) return Status::Error("KnnAttention: K must have at least one head (Hkv >= 1), got K " + dims_str(k));
  if (q[1] % k[1] != 0) return mismatch("head grouping (Hq must be a multiple of Hkv)", "Q.Hq", q[1], "K.Hkv", k[1]);
  if (q[3] < 1) return Status::Error("KnnAttention: head dim D must be >= 1, got Q " + dims_str(q));
  out->B = q[0];
  out->Hq = q[1];
  out->S = q[2];
  out->D = q[3];
  out->Hkv = k[1];
  out->T = k[2];
  out->Dv = v[3];
  return Status();
}

Status resolve_mask(const std::vector<int64_t>& dims, const AttentionShape& s, MaskView* out) {
  if (dims.empty() || dims.size() > 4)
    return Status::Error("KnnAttention: attn_mask must have rank 1..4 (broadcastable to [B,Hq,S,T]), got shape " +
                         dims_str(dims));
  const int64_t full[4] = {s.B, s.Hq, s.S, s.T};
  const char* letters[4] = {"B", "Hq", "S", "T"};
  int64_t padded[4] = {1, 1, 1, 1};
  const size_t off = 4 - dims.size();
  for (size_t i = 0; i < dims.size(); ++i) padded[off + i] = dims[i];
  int64_t stride = 1;
  for (int a = 3; a >= 0; --a) {
    if (padded[a] != 1 && padded[a] != full[a]) {
      std::ostringstream o;
      o << "KnnAttention: attn_mask shape " << dims_str(dims) << " does not broadcast to [B,Hq,S,T]=[" << s.B << ","
        << s.Hq << "," << s.S << "," << s.T << "]: axis " << letters[a] << " is " << padded[a] << ", expected 1 or "
        << full[a];
      return Status::Error(o.str());
    }
    out->stride[a] = padded[a] == 1 ? 0 : stride;
    stride *= padded[a];
  }
  return Status();
}

Status check_key_padding(const std::vector<int64_t>& dims, const AttentionShape& s) {
  if (dims.size() != 2 || dims[0] != s.B || dims[1] != s.T) {
    std::ostringstream o;
    o << "KnnAttention: key_padding_mask must have shape [B,T]=[" << s.B << "," << s.T << "], got " << dims_str(dims);
    return Status::Error(o.str());
  }
  return Status();
}

Status check_settings(const KnnSettings& k) {
  auto bad = [](const char* name, int64_t v, const char* expected) {
    return Status::Error(std::string("KnnAttention: attribute ") + name + "=" + std::to_string(v) +
                         " is invalid, expected " + expected);
  };
  if (k.top_k < 0) return bad("top_k", k.top_k, ">= 0 (0 = exact attention)");
  if (k.search != kSearchLowRank && k.search != kSearchDci)
    return bad("search", k.search, "0 (low-rank scoring) or 1 (Prioritized DCI)");
  if (k.rank < 1 || k.rank > 4096) return bad("rank", k.rank, "1..4096");
  if (k.num_composite < 1 || k.num_composite > 64) return bad("L", k.num_composite, "1..64");
  if (k.num_simple < 1 || k.num_simple > 64) return bad("m", k.num_simple, "1..64");
  if (k.max_candidates < 0) return bad("max_candidates", k.max_candidates, ">= 0");
  if (!(k.candidate_fraction >= 0.f && k.candidate_fraction <= 1.f))
    return Status::Error("KnnAttention: attribute candidate_fraction=" + std::to_string(k.candidate_fraction) +
                         " is invalid, expected 0..1");
  if (k.min_keys < 0) return bad("min_keys", k.min_keys, ">= 0");
  if (k.decode_min_keys < 0) return bad("decode_min_keys", k.decode_min_keys, ">= 0");
  if (k.recent_keys < 0) return bad("local_window", k.recent_keys, ">= 0");
  if (k.num_sink < 0) return bad("num_sink", k.num_sink, ">= 0");
  if (k.tail_samples < 0) return bad("tail_samples", k.tail_samples, ">= 0");
  if (!(k.tail_limit >= 0.f && k.tail_limit <= 1.f))
    return Status::Error("KnnAttention: attribute tail_limit=" + std::to_string(k.tail_limit) +
                         " is invalid, expected 0..1 (1: never fall back to exact)");
  if (k.auto_window < 0) return bad("auto_window", k.auto_window, ">= 0 (0: no probe)");
  if (!(k.auto_window_error >= 0.f && k.auto_window_error <= 1.f))
    return Status::Error("KnnAttention: attribute auto_window_error=" + std::to_string(k.auto_window_error) +
                         " is invalid, expected 0..1");
  constexpr int64_t kHuge = int64_t(1) << 40;
  if (k.auto_window > kHuge) return bad("auto_window", k.auto_window, "<= 2^40");
  if (k.top_k > kHuge) return bad("top_k", k.top_k, "<= 2^40");
  if (k.max_candidates > kHuge) return bad("max_candidates", k.max_candidates, "<= 2^40");
  if (k.recent_keys > kHuge) return bad("local_window", k.recent_keys, "<= 2^40");
  if (k.num_sink > kHuge) return bad("num_sink", k.num_sink, "<= 2^40");
  if (k.tail_samples > kHuge) return bad("tail_samples", k.tail_samples, "<= 2^40");
  return Status();
}

Status check_head_values(const HeadValues& h, int64_t Hq) {
  constexpr int64_t kHuge = int64_t(1) << 40;
  for (const HeadField& f : kHeadFields) {
    const char* name = f.name;
    const std::vector<int64_t>* values = &(h.*(f.values));
    if (Hq >= 0 && !values->empty() && static_cast<int64_t>(values->size()) != Hq)
      return Status::Error(std::string("KnnAttention: attribute ") + name + " has " + std::to_string(values->size()) +
                           " values, expected one per query head (Hq=" + std::to_string(Hq) + ") or none");
    for (size_t i = 0; i < values->size(); ++i)
      if ((*values)[i] < 0 || (*values)[i] > kHuge)
        return Status::Error(std::string("KnnAttention: attribute ") + name + "[" + std::to_string(i) +
                             "]=" + std::to_string((*values)[i]) + " is invalid, expected 0..2^40");
  }
  return Status();
}

}  // namespace iceformer
