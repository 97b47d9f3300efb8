// The only file that includes ONNX Runtime headers: the custom-op definition, kernel creation (attributes),
// Compute (inputs -> AttentionParams, host thread pool), shape inference and RegisterCustomOps.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "attention.h"
#include "contract.h"
#include "simd.h"
#include "stats_log.h"

namespace {

using iceformer::Status;

OrtStatusPtr make_error(const std::string& msg) { return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str()); }

const iceformer::AttrSpec& attr_spec(const char* name) {
  for (const auto& a : iceformer::kAttrs)
    if (std::strcmp(a.name, name) == 0) return a;
  return iceformer::kAttrs[0];  // unreachable for names of the contract
}

// Reads one attribute of the contract: its value, or the contract default when absent. Returns false and
// sets *err when present with the wrong type.
template <typename T>
bool read_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name, T* out, bool* present,
               std::string* err) {
  OrtStatus* st = nullptr;
  if constexpr (std::is_same_v<T, int64_t>) {
    st = api.KernelInfoGetAttribute_int64(info, name, out);
  } else {
    st = api.KernelInfoGetAttribute_float(info, name, out);
  }
  *present = st == nullptr;
  if (st != nullptr) {
    const std::string msg = api.GetErrorMessage(st);
    api.ReleaseStatus(st);
    if (msg.find("No attribute") == std::string::npos) {
      *err = std::string("KnnAttention: attribute ") + name + " has the wrong type, expected " +
             (std::is_same_v<T, int64_t> ? "int" : "float") + " (" + msg + ")";
      return false;
    }
    *out = static_cast<T>(attr_spec(name).default_value);
  }
  return true;
}

struct KernelConfig {
  bool is_causal = false;
  int64_t window = -1;  // local_window_size
  bool has_scale = false;
  float scale = 0.f;
  iceformer::KnnSettings knn;
};

struct KnnAttentionKernel {
  explicit KnnAttentionKernel(const KernelConfig& c) : cfg(c) {}
  OrtStatusPtr ComputeV2(OrtKernelContext* context);
  KernelConfig cfg;
};

void host_parallel_for(void* host, void (*fn)(void*, size_t), size_t n, void* data) {
  // Every call drains the caller's shared task counter, so a few calls per pool thread suffice.
  const size_t calls = n < 64 ? n : 64;
  static_cast<const Ort::KernelContext*>(host)->ParallelFor(fn, calls, 0, data);
}

std::vector<int64_t> dims_of(const Ort::ConstValue& v) { return v.GetTensorTypeAndShapeInfo().GetShape(); }

OrtStatusPtr KnnAttentionKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Ort::KernelContext ctx(context);
    const size_t n_in = ctx.GetInputCount();
    Ort::ConstValue q = ctx.GetInput(0), k = ctx.GetInput(1), v = ctx.GetInput(2);
    if (!q || !k || !v) return make_error("KnnAttention: inputs Q, K and V are required");
    iceformer::AttentionParams p;
    if (Status s = iceformer::resolve_shape(dims_of(q), dims_of(k), dims_of(v), &p.shape); !s.ok())
      return make_error(s.message());
    const auto& sh = p.shape;

    if (n_in > 3) {
      Ort::ConstValue m = ctx.GetInput(3);
      if (m) {
        const auto info = m.GetTensorTypeAndShapeInfo();
        const auto et = info.GetElementType();
        if (et == ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL) {
          p.mask.kind = iceformer::MaskKind::kBool;
        } else if (et == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
          p.mask.kind = iceformer::MaskKind::kFloat;
        } else {
          return make_error("KnnAttention: attn_mask must be bool or float32, got element type " +
                            std::to_string(static_cast<int>(et)));
        }
        if (Status s = iceformer::resolve_mask(info.GetShape(), sh, &p.mask); !s.ok()) return make_error(s.message());
        p.mask.data = m.GetTensorRawData();
        // A single 0.0 (what the rewriter passes for "no mask", so the reference function sees 4 inputs) is no mask.
        if (p.mask.kind == iceformer::MaskKind::kFloat && info.GetElementCount() == 1 &&
            *static_cast<const float*>(p.mask.data) == 0.f)
          p.mask.kind = iceformer::MaskKind::kNone;
      }
    }
    if (n_in > 4) {
      Ort::ConstValue kp = ctx.GetInput(4);
      if (kp) {
        const auto info = kp.GetTensorTypeAndShapeInfo();
        const auto et = info.GetElementType();
        if (et == ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL) {
          p.key_padding.kind = iceformer::KeyPaddingKind::kBool;
        } else if (et == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
          p.key_padding.kind = iceformer::KeyPaddingKind::kInt32;
        } else if (et == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
          p.key_padding.kind = iceformer::KeyPaddingKind::kInt64;
        } else {
          return make_error("KnnAttention: key_padding_mask must be bool, int32 or int64, got element type " +
                            std::to_string(static_cast<int>(et)));
        }
        if (Status s = iceformer::check_key_padding(info.GetShape(), sh); !s.ok()) return make_error(s.message());
        p.key_padding.data = kp.GetTensorRawData();
      }
    }

    Ort::UnownedValue y = ctx.GetOutput(0, std::vector<int64_t>{sh.B, sh.Hq, sh.S, sh.Dv});
    p.q = q.GetTensorData<float>();
    p.k = k.GetTensorData<float>();
    p.v = v.GetTensorData<float>();
    p.y = y.GetTensorMutableData<float>();
    p.is_causal = cfg.is_causal;
    p.window = cfg.window;
    p.scale = cfg.has_scale ? cfg.scale : 1.0f / std::sqrt(static_cast<float>(sh.D));
    p.knn = cfg.knn;

    iceformer::Parallel par{&ctx, host_parallel_for};
    // Scratch from the session's CPU arena: reused across calls.
    const OrtApi& api = Ort::GetApi();
    OrtAllocator* arena = nullptr;
    const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    if (OrtStatus* st = api.KernelContext_GetAllocator(context, cpu, &arena)) {
      api.ReleaseStatus(st);
      arena = nullptr;  // fall back to malloc
    }
    iceformer::HostAllocator mem;
    if (arena != nullptr) {
      mem.host = arena;
      mem.alloc = [](void* a, size_t bytes) -> void* {
        OrtAllocator* al = static_cast<OrtAllocator*>(a);
        return al->Alloc(al, bytes);  // the arena returns nullptr or throws inside ORT: both end as nullptr here
      };
      mem.free = [](void* a, void* q) {
        OrtAllocator* al = static_cast<OrtAllocator*>(a);
        al->Free(al, q);
      };
    }
    iceformer::CallStats stats;
    Status s = iceformer::run_attention(p, par, mem, &stats);
    if (arena != nullptr) api.ReleaseAllocator(arena);
    if (!s.ok()) return make_error(s.message());
    iceformer::log_call_stats(p, stats);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (std::string("KnnAttention: ") + e.what()).c_str());
  }
}

struct KnnAttentionOp : Ort::CustomOpBase<KnnAttentionOp, KnnAttentionKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    KernelConfig c;
    std::string err;
    bool present = false;
    int64_t causal = 0, iv = 0;
    float fv = 0.f;
    auto get_i = [&](const char* name, int64_t* dst) {
      if (!read_attr(api, info, name, &iv, &present, &err)) return false;
      *dst = iv;
      return true;
    };
    if (!read_attr(api, info, "is_causal", &causal, &present, &err)) return make_error(err);
    if (causal != 0 && causal != 1)
      return make_error("KnnAttention: attribute is_causal=" + std::to_string(causal) + " is invalid, expected 0 or 1");
    c.is_causal = causal == 1;
    if (!read_attr(api, info, "local_window_size", &c.window, &present, &err)) return make_error(err);
    if (c.window < -1 || c.window == 0)
      return make_error("KnnAttention: attribute local_window_size=" + std::to_string(c.window) +
                        " is invalid, expected -1 (no window) or >= 1 (keys per query, its own included)");
    if (!read_attr(api, info, "scale", &fv, &c.has_scale, &err)) return make_error(err);
    if (c.has_scale && !std::isfinite(fv))
      return make_error("KnnAttention: attribute scale=" + std::to_string(fv) + " is invalid, expected a finite float");
    c.scale = fv;
    if (!get_i("top_k", &c.knn.top_k) || !get_i("search", &c.knn.search) || !get_i("rank", &c.knn.rank) || !get_i("L", &c.knn.num_composite) || !get_i("m", &c.knn.num_simple) ||
        !get_i("max_candidates", &c.knn.max_candidates) || !get_i("min_keys", &c.knn.min_keys) ||
        !get_i("local_window", &c.knn.local_window) || !get_i("num_sink", &c.knn.num_sink) ||
        !get_i("tail_samples", &c.knn.tail_samples) || !get_i("seed", &c.knn.seed))
      return make_error(err);
    if (!read_attr(api, info, "candidate_fraction", &c.knn.candidate_fraction, &present, &err)) return make_error(err);
    if (!read_attr(api, info, "tail_limit", &c.knn.tail_limit, &present, &err)) return make_error(err);
    if (Status s = iceformer::check_settings(c.knn); !s.ok()) return make_error(s.message());
    try {
      *kernel = new KnnAttentionKernel(c);
    } catch (const std::exception& e) {
      return make_error(std::string("KnnAttention: ") + e.what());
    }
    return nullptr;
  }

  const char* GetName() const { return iceformer::kOpName; }
  size_t GetInputTypeCount() const { return iceformer::kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    // Mask inputs accept several element types; Compute checks them.
    return iceformer::kInputs[i].dtype == iceformer::DType::kFloat ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                                                  : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return iceformer::kInputs[i].optional ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                                          : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

  // Y = [B,Hq,S,Dv] from Q = [B,Hq,S,D] and V = [B,Hkv,T,Dv].
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) {
    try {
      if (ctx.GetInputCount() < 3) return nullptr;
      const auto& q = ctx.GetInputShape(0);
      const auto& v = ctx.GetInputShape(2);
      if (q.size() != 4 || v.size() != 4) {
        if (q.empty() || v.empty()) return nullptr;  // unknown rank
        return make_error("KnnAttention: Q and V must have rank 4, got ranks " + std::to_string(q.size()) + " and " +
                          std::to_string(v.size()));
      }
      Ort::ShapeInferContext::Shape y{q[0], q[1], q[2], v[3]};
      return ctx.SetOutputShape(0, y).release();
    } catch (const std::exception&) {
      return nullptr;  // shape unknown: leave it to run time
    }
  }
};

std::mutex g_mutex;
std::vector<OrtCustomOpDomain*> g_domains;  // kept for the process lifetime: sessions may outlive options

}  // namespace

#define ICE_EXPORT __attribute__((visibility("default")))

extern "C" {

ICE_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    const std::string msg = std::string("iceformer: this library was built against ONNX Runtime API version ") +
                            std::to_string(ORT_API_VERSION) + " (onnxruntime >= 1." + std::to_string(ORT_API_VERSION) +
                            "), but the loaded runtime is " + api_base->GetVersionString() +
                            ": upgrade onnxruntime";
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest->CreateStatus(ORT_FAIL, msg.c_str());
  }
  Ort::InitApi(api);
  static KnnAttentionOp op;
  std::lock_guard<std::mutex> lock(g_mutex);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain(iceformer::kDomain, &domain)) return st;
  if (OrtStatus* st = api->CustomOpDomain_Add(domain, &op)) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
  if (OrtStatus* st = api->AddCustomOpDomain(options, domain)) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
  g_domains.push_back(domain);
  return nullptr;
}

// Introspection for tests and tools (plain C, no ORT needed).
ICE_EXPORT const char* IceformerContractJson() {
  static const std::string s = iceformer::contract_json();
  return s.c_str();
}

ICE_EXPORT const char* IceformerSimdVariant() { return iceformer::kernels().name; }

}  // extern "C"
