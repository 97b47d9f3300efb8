// The op contract as registered: domain, name, version, inputs and attributes with defaults. The Python
// contract (iceformer.ops.contract) states the same; tests compare the two through contract_json().
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

namespace iceformer {

constexpr const char* kDomain = "iceformer";
constexpr const char* kOpName = "KnnAttention";
constexpr int kOpVersion = 1;

enum class DType { kFloat, kFloatOrBool, kBoolOrInt, kInt32 };

struct InputSpec {
  const char* name;
  const char* shape;
  DType dtype;
  bool optional;
};

constexpr InputSpec kInputs[] = {
    {"Q", "B,Hq,S,D", DType::kFloat, false},
    {"K", "B,Hkv,T,D", DType::kFloat, false},
    {"V", "B,Hkv,T,Dv", DType::kFloat, false},
    {"attn_mask", "B,Hq,S,T", DType::kFloatOrBool, true},
    {"key_padding_mask", "B,T", DType::kBoolOrInt, true},
};
constexpr int kNumInputs = sizeof(kInputs) / sizeof(kInputs[0]);

struct AttrSpec {
  const char* name;
  char type;         // 'i' int, 'f' float, 'I' list of ints (default: empty)
  bool has_default;  // false: absent means "derived" (scale = 1/sqrt(D))
  double default_value;
};

constexpr AttrSpec kAttrs[] = {
    {"is_causal", 'i', true, 0},
    {"local_window_size", 'i', true, -1},
    {"scale", 'f', false, 0},
    {"top_k", 'i', true, 128},
    {"search", 'i', true, 0},
    {"rank", 'i', true, 32},
    {"L", 'i', true, 4},
    {"m", 'i', true, 2},
    {"max_candidates", 'i', true, 256},
    {"candidate_fraction", 'f', true, 0.0},
    {"min_keys", 'i', true, 4096},
    {"decode_min_keys", 'i', true, 24576},
    {"local_window", 'i', true, 64},
    {"num_sink", 'i', true, 4},
    {"tail_samples", 'i', true, 1024},
    {"tail_limit", 'f', true, 0.5},
    {"seed", 'i', true, 0},
    {"auto_window", 'i', true, 2048},
    {"auto_window_error", 'f', true, 0.01},
    {"head_budgets", 'I', true, 0},
    {"head_tail_samples", 'I', true, 0},
    {"head_windows", 'I', true, 0},
};
constexpr int kNumAttrs = sizeof(kAttrs) / sizeof(kAttrs[0]);

// GroupQueryAttention (same domain): com.microsoft.GroupQueryAttention's inputs, outputs and attributes (version 1),
// then KnnAttention's k-NN attributes (kAttrs from kFirstKnnAttr on) with the same meaning and defaults.
constexpr const char* kGqaOpName = "GroupQueryAttention";
constexpr InputSpec kGqaInputs[] = {
    {"query", "B,S,Hq*D", DType::kFloat, false},          {"key", "B,S,Hkv*D", DType::kFloat, true},
    {"value", "B,S,Hkv*D", DType::kFloat, true},          {"past_key", "B,Hkv,P,D", DType::kFloat, true},
    {"past_value", "B,Hkv,P,D", DType::kFloat, true},     {"seqlens_k", "B", DType::kInt32, false},
    {"total_sequence_length", "1", DType::kInt32, false}, {"cos_cache", "R,r/2", DType::kFloat, true},
    {"sin_cache", "R,r/2", DType::kFloat, true},
};
constexpr int kGqaNumInputs = sizeof(kGqaInputs) / sizeof(kGqaInputs[0]);
// ORT's later optional inputs, refused by name at session creation (position 9 on).
constexpr const char* kGqaRefusedInputs[] = {"position_ids", "attention_bias", "head_sink",     "k_scale",
                                             "v_scale",      "q_norm_weight",  "k_norm_weight", "query_seqlens"};
constexpr int kGqaDeclaredInputs = kGqaNumInputs + sizeof(kGqaRefusedInputs) / sizeof(kGqaRefusedInputs[0]);
constexpr const char* kGqaOutputs[] = {"output", "present_key", "present_value", "output_qk"};

constexpr AttrSpec kGqaAttrs[] = {
    {"num_heads", 'i', false, 0},
    {"kv_num_heads", 'i', false, 0},
    {"scale", 'f', true, 0.0},
    {"softcap", 'f', true, 0.0},
    {"local_window_size", 'i', true, -1},
    {"do_rotary", 'i', true, 0},
    {"rotary_interleaved", 'i', true, 0},
    {"causal", 'i', true, 1},
    {"smooth_softmax", 'i', true, 0},
    {"qk_output", 'i', true, 0},
    {"sliding_window_cache", 'i', true, 0},
};
constexpr int kGqaNumAttrs = sizeof(kGqaAttrs) / sizeof(kGqaAttrs[0]);
constexpr int kFirstKnnAttr = 3;  // kAttrs[kFirstKnnAttr..]: top_k ... seed, then the per-head lists
constexpr int kNumHeadAttrs = 3;  // the last kAttrs: head_budgets, head_tail_samples, head_windows (type 'I')

constexpr bool same_name(const char* a, const char* b) {
  while (*a != 0 && *a == *b) ++a, ++b;
  return *a == *b;
}

// Index of attribute `name` in a contract table. In a constant expression (CONTRACT_ATTR) a name the table does not
// have reaches the throw, which does not compile: a misspelt attribute is a build error, not a silent default.
template <size_t N>
constexpr int attr_index(const AttrSpec (&table)[N], const char* name) {
  for (size_t i = 0; i < N; ++i)
    if (same_name(table[i].name, name)) return static_cast<int>(i);
  throw "attribute not in the contract";
}
#define CONTRACT_ATTR(table, name) \
  ((table)[std::integral_constant<int, ::iceformer::attr_index((table), (name))>::value])

// JSON description of the registered contracts (domain, op, version, inputs, attributes, defaults).
std::string contract_json();
std::string gqa_contract_json();

}  // namespace iceformer
