// GroupQueryAttention with com.microsoft.GroupQueryAttention's contract (version 1, the CPU subset genai's
// builder emits): packed QKV or separate Q/K/V [B,S,H*D]; past / present KV [B,Hkv,rows,D], present aliasing past
// (past_present_share_buffer) or separate; per-batch valid lengths L_b = seqlens_k[b] + 1; rotary inside; hard
// window; softcap. Prefill (S >= 32) runs the KnnAttention driver (exact or k-NN) over the cache and builds the decode
// index; shorter steps run k-NN decode (decode_knn.h) from min_keys cached keys on, flash decoding below. Free of ONNX
// Runtime types.
#pragma once
#include <cstdint>
#include <vector>

#include "attention.h"
#include "decode_index.h"
#include "params.h"
#include "status.h"

namespace iceformer {

struct GqaParams {
  int64_t B = 0, S = 0, Hq = 0, Hkv = 0, D = 0;
  const float* query = nullptr;     // [B,S,Hq*D], or packed [B,S,(Hq+2*Hkv)*D] when key is nullptr
  const float* key = nullptr;       // [B,S,Hkv*D]
  const float* value = nullptr;     // [B,S,Hkv*D]
  const float* past_key = nullptr;  // [B,Hkv,past_rows,D] or nullptr
  const float* past_value = nullptr;
  int64_t past_rows = 0;
  float* present_key = nullptr;  // [B,Hkv,present_rows,D]; may alias past_key
  float* present_value = nullptr;
  int64_t present_rows = 0;
  const int32_t* seqlens_k = nullptr;  // [B]: L_b - 1
  int64_t total = 0;                   // total_sequence_length
  const float* cos_cache = nullptr;    // [cache_rows, rot_half] when rotary
  const float* sin_cache = nullptr;
  int64_t cache_rows = 0, rot_half = 0;
  bool rotary = false, interleaved = false, causal = true;
  float scale = 0.f;  // 0: 1/sqrt(D)
  float softcap = 0.f;
  int64_t window = -1;  // local_window_size: keys j > position - window (-1: none)
  KnnSettings knn;
  float* output = nullptr;  // [B,S,Hq*D]
  // The kernel instance's persistent decode indexes (decode_index.h); nullptr: decode steps run flash decoding.
  DecodeIndexCache* indexes = nullptr;
};

// Input shapes as given (absent inputs: empty, has_* false).
struct GqaInputDims {
  std::vector<int64_t> query, key, value, past_key, past_value, seqlens_k, total, cos, sin;
  bool has_key = false, has_value = false, has_past_key = false, has_past_value = false, has_cos = false,
       has_sin = false;
};

// Fills g's B, S, D, past_rows, present_rows (max(total, past rows): the shared buffer, or past + new), cache_rows
// and rot_half from the shapes (Hq, Hkv, rotary and total already set), or says what is wrong: input, axis,
// expected, actual.
Status resolve_gqa_shapes(const GqaInputDims& d, GqaParams* g);

// Checks the per-batch lengths against the buffers (what, where, expected, actual), then computes.
Status run_gqa(const GqaParams& g, const Parallel& par, const HostAllocator& mem, CallStats* stats);

}  // namespace iceformer
