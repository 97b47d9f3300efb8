// The op contract as registered: domain, name, version, inputs and attributes with defaults. The Python
// contract (iceformer.ops.contract) states the same; tests compare the two through contract_json().
#pragma once
#include <cstdint>
#include <string>

namespace iceformer {

constexpr const char* kDomain = "iceformer";
constexpr const char* kOpName = "KnnAttention";
constexpr int kOpVersion = 1;

enum class DType { kFloat, kFloatOrBool, kBoolOrInt };

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
  char type;       // 'i' int, 'f' float
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
    {"min_keys", 'i', true, 8192},
    {"local_window", 'i', true, 64},
    {"num_sink", 'i', true, 4},
    {"tail_samples", 'i', true, 256},
    {"tail_limit", 'f', true, 0.3},
    {"seed", 'i', true, 0},
};
constexpr int kNumAttrs = sizeof(kAttrs) / sizeof(kAttrs[0]);

// JSON description of the registered contract (domain, op, version, inputs, attributes, defaults).
std::string contract_json();

}  // namespace iceformer
