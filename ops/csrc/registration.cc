// The only file that includes ONNX Runtime headers: the custom-op definition, kernel creation (attributes),
// Compute (inputs -> AttentionParams, host thread pool), shape inference and RegisterCustomOps.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cmath>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "attention.h"
#include "contract.h"
#include "decode_index.h"
#include "gqa_attention.h"
#include "knn_settings.h"
#include "masking.h"
#include "host_buffer.h"
#include "simd.h"
#include "validate.h"

namespace {

using iceformer::Status;

OrtStatusPtr make_error(const std::string& msg) {
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str());
}

// A kernel status as ORT's: bad input is INVALID_ARGUMENT, memory the call could not get is RUNTIME_EXCEPTION.
OrtStatusPtr make_error(const Status& s) {
  const OrtErrorCode code = s.kind() == Status::Kind::kOutOfMemory ? ORT_RUNTIME_EXCEPTION : ORT_INVALID_ARGUMENT;
  return Ort::GetApi().CreateStatus(code, s.message().c_str());
}

// Reads one attribute as its contract entry states it: its value, or the entry's default when absent. Returns
// false and sets *err when present with the wrong type. Entries come from CONTRACT_ATTR or kKnnFields (knn_settings.h):
// a name the contract does not have does not compile.
template <typename T>
bool read_attr(const OrtApi& api, const OrtKernelInfo* info, const iceformer::AttrSpec& spec, T* out, bool* present,
               std::string* err) {
  static_assert(std::is_same_v<T, int64_t> || std::is_same_v<T, float>);
  if ((spec.type == 'i') != std::is_same_v<T, int64_t>) {
    *err = std::string("KnnAttention: attribute ") + spec.name + " read as the wrong type (a bug in the library)";
    return false;
  }
  OrtStatus* st = nullptr;
  if constexpr (std::is_same_v<T, int64_t>) {
    st = api.KernelInfoGetAttribute_int64(info, spec.name, out);
  } else {
    st = api.KernelInfoGetAttribute_float(info, spec.name, out);
  }
  *present = st == nullptr;
  if (st != nullptr) {
    const std::string msg = api.GetErrorMessage(st);
    api.ReleaseStatus(st);
    if (msg.find("No attribute") == std::string::npos) {
      *err = std::string("KnnAttention: attribute ") + spec.name + " has the wrong type, expected " +
             (std::is_same_v<T, int64_t> ? "int" : "float") + " (" + msg + ")";
      return false;
    }
    *out = static_cast<T>(spec.default_value);
  }
  return true;
}

// Whether an ORT call succeeded (its status released).
bool probe(const OrtApi& api, OrtStatus* st) {
  if (st == nullptr) return true;
  api.ReleaseStatus(st);
  return false;
}

// Reads a list-of-ints attribute (contract type 'I'): its values, or empty when absent. Returns false and sets *err
// when present with the wrong type.
bool read_ints_attr(const OrtApi& api, const OrtKernelInfo* info, const iceformer::AttrSpec& spec,
                    std::vector<int64_t>* out, std::string* err) {
  out->clear();
  // A scalar under the name is the wrong type (ORT's list read does not always say so).
  int64_t scalar = 0;
  float scalar_f = 0.f;
  std::string msg = "a scalar";
  bool ok = !probe(api, api.KernelInfoGetAttribute_int64(info, spec.name, &scalar)) &&
            !probe(api, api.KernelInfoGetAttribute_float(info, spec.name, &scalar_f));
  if (ok) {
    size_t n = 0;
    OrtStatus* st = api.KernelInfoGetAttributeArray_int64(info, spec.name, nullptr, &n);
    if (st == nullptr && n > 0) {
      out->resize(n);
      st = api.KernelInfoGetAttributeArray_int64(info, spec.name, out->data(), &n);
    }
    if (st != nullptr) {
      msg = api.GetErrorMessage(st);
      api.ReleaseStatus(st);
      out->clear();
      ok = msg.find("No attribute") != std::string::npos;
    }
  }
  if (ok) return true;
  *err = std::string("KnnAttention: attribute ") + spec.name + " has the wrong type, expected ints (" + msg + ")";
  return false;
}

// The k-NN attributes, read in one loop over the contract (scalars into k, per-head lists into heads), then checked.
bool read_knn_attrs(const OrtApi& api, const OrtKernelInfo* info, iceformer::KnnSettings* k,
                    iceformer::HeadValues* heads, std::string* err) {
  bool present = false;
  using iceformer::kKnnFields;
  for (int i = 0; i < iceformer::kNumKnnFields; ++i) {
    const iceformer::AttrSpec& spec = iceformer::kAttrs[iceformer::kFirstKnnAttr + i];
    const bool ok = kKnnFields[i].i != nullptr ? read_attr(api, info, spec, &(k->*(kKnnFields[i].i)), &present, err)
                                               : read_attr(api, info, spec, &(k->*(kKnnFields[i].f)), &present, err);
    if (!ok) return false;
  }
  for (int i = 0; i < iceformer::kNumHeadAttrs; ++i)
    if (!read_ints_attr(api, info, iceformer::kAttrs[iceformer::kFirstHeadAttr + i],
                        &(heads->*(iceformer::kHeadFields[i].values)), err))
      return false;
  for (Status s : {iceformer::check_settings(*k), iceformer::check_head_values(*heads, -1)})
    if (!s.ok()) {
      *err = s.message();
      return false;
    }
  return true;
}

struct KernelConfig {
  bool is_causal = false;
  int64_t window = -1;  // local_window_size
  bool has_scale = false;
  float scale = 0.f;
  iceformer::KnnSettings knn;
  iceformer::HeadValues heads;  // per-head lists; knn's views bound to them per call
};

struct KnnAttentionKernel {
  explicit KnnAttentionKernel(const KernelConfig& c) : cfg(c) {}
  OrtStatusPtr ComputeV2(OrtKernelContext* context);
  KernelConfig cfg;
  iceformer::DecodeIndexCache indexes;  // the k-NN decode path's state between runs, freed with the session
};

void host_parallel_for(void* host, void (*fn)(void*, size_t), size_t n, void* data) {
  // Every call drains the caller's shared task counter, so a few calls per pool thread suffice.
  const size_t calls = n < 64 ? n : 64;
  static_cast<const Ort::KernelContext*>(host)->ParallelFor(fn, calls, 0, data);
}

std::vector<int64_t> dims_of(const Ort::ConstValue& v) { return v.GetTensorTypeAndShapeInfo().GetShape(); }

// Scratch from the session's CPU arena for one Compute call (reused across calls); malloc when there is none.
struct SessionArena {
  explicit SessionArena(OrtKernelContext* context) {
    const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    if (OrtStatus* st = Ort::GetApi().KernelContext_GetAllocator(context, cpu, &arena)) {
      Ort::GetApi().ReleaseStatus(st);
      arena = nullptr;
    }
    if (arena == nullptr) return;
    mem.host = arena;
    mem.alloc = [](void* a, size_t bytes) -> void* {
      OrtAllocator* al = static_cast<OrtAllocator*>(a);
      try {  // ORT's arena throws when it cannot grow: the caller reports what it wanted, with sizes
        return al->Alloc(al, bytes);
      } catch (...) {
        return nullptr;
      }
    };
    mem.free = [](void* a, void* q) {
      OrtAllocator* al = static_cast<OrtAllocator*>(a);
      al->Free(al, q);
    };
  }
  ~SessionArena() {
    if (arena != nullptr) Ort::GetApi().ReleaseAllocator(arena);
  }
  SessionArena(const SessionArena&) = delete;
  SessionArena& operator=(const SessionArena&) = delete;
  OrtAllocator* arena = nullptr;
  iceformer::HostAllocator mem;
};

OrtStatusPtr KnnAttentionKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Ort::KernelContext ctx(context);
    const size_t n_in = ctx.GetInputCount();
    Ort::ConstValue q = ctx.GetInput(0), k = ctx.GetInput(1), v = ctx.GetInput(2);
    if (!q || !k || !v) return make_error("KnnAttention: inputs Q, K and V are required");
    iceformer::AttentionParams p;
    if (Status s = iceformer::resolve_shape(dims_of(q), dims_of(k), dims_of(v), &p.shape); !s.ok())
      return make_error(s);
    const auto& sh = p.shape;

    if (n_in > 3) {
      Ort::ConstValue m = ctx.GetInput(3);
      if (m) {
        const auto info = m.GetTensorTypeAndShapeInfo();
        const auto et = info.GetElementType();
        if (et == ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL) {
          p.mask.kind = iceformer::MaskDtype::kBool;
        } else if (et == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
          p.mask.kind = iceformer::MaskDtype::kFloat;
        } else {
          return make_error("KnnAttention: attn_mask must be bool or float32, got element type " +
                            std::to_string(static_cast<int>(et)));
        }
        if (Status s = iceformer::resolve_mask(info.GetShape(), sh, &p.mask); !s.ok()) return make_error(s);
        p.mask.data = m.GetTensorRawData();
        if (iceformer::is_no_mask(p.mask.kind == iceformer::MaskDtype::kFloat, info.GetElementCount(), p.mask.data))
          p.mask.kind = iceformer::MaskDtype::kNone;
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
        if (Status s = iceformer::check_key_padding(info.GetShape(), sh); !s.ok()) return make_error(s);
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
    if (Status s = iceformer::check_head_values(cfg.heads, sh.Hq); !s.ok()) return make_error(s);
    cfg.heads.bind(&p.knn);

    iceformer::Parallel par{&ctx, host_parallel_for};
    SessionArena arena(context);
    if (Status s = iceformer::run_knn_attention(p, par, arena.mem, &indexes); !s.ok()) return make_error(s);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::bad_alloc&) {
    return make_error(Status::OutOfMemory("KnnAttention: out of memory"));
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (std::string("KnnAttention: ") + e.what()).c_str());
  }
}

struct KnnAttentionOp : Ort::CustomOpBase<KnnAttentionOp, KnnAttentionKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    KernelConfig c;
    std::string err;
    bool present = false;
    int64_t causal = 0;
    float fv = 0.f;
    if (!read_attr(api, info, CONTRACT_ATTR(iceformer::kAttrs, "is_causal"), &causal, &present, &err))
      return make_error(err);
    if (causal != 0 && causal != 1)
      return make_error("KnnAttention: attribute is_causal=" + std::to_string(causal) + " is invalid, expected 0 or 1");
    c.is_causal = causal == 1;
    if (!read_attr(api, info, CONTRACT_ATTR(iceformer::kAttrs, "local_window_size"), &c.window, &present, &err))
      return make_error(err);
    if (c.window < -1 || c.window == 0)
      return make_error("KnnAttention: attribute local_window_size=" + std::to_string(c.window) +
                        " is invalid, expected -1 (no window) or >= 1 (keys per query, its own included)");
    if (!read_attr(api, info, CONTRACT_ATTR(iceformer::kAttrs, "scale"), &fv, &c.has_scale, &err))
      return make_error(err);
    if (c.has_scale && !std::isfinite(fv))
      return make_error("KnnAttention: attribute scale=" + std::to_string(fv) + " is invalid, expected a finite float");
    c.scale = fv;
    if (!read_knn_attrs(api, info, &c.knn, &c.heads, &err)) return make_error(err);
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

// ---- GroupQueryAttention (com.microsoft.GroupQueryAttention's contract) ----

struct GqaConfig {
  int64_t Hq = 0, Hkv = 0, window = -1;
  float scale = 0.f, softcap = 0.f;
  bool rotary = false, interleaved = false, causal = true;
  iceformer::KnnSettings knn;
  iceformer::HeadValues heads;  // per-head lists (checked against num_heads at creation)
};

struct GqaKernel {
  explicit GqaKernel(const GqaConfig& c) : cfg(c) {}
  OrtStatusPtr ComputeV2(OrtKernelContext* context);
  GqaConfig cfg;
  iceformer::DecodeIndexCache indexes;  // the k-NN decode path's state between runs, freed with the session
};

OrtStatusPtr gqa_error(const std::string& msg) { return make_error("GroupQueryAttention: " + msg); }

// Input i's dims and presence (absent or empty-named optional inputs: not present).
bool gqa_input(Ort::KernelContext& ctx, size_t i, std::vector<int64_t>* dims) {
  if (i >= ctx.GetInputCount()) return false;
  Ort::ConstValue v = ctx.GetInput(i);
  if (!v) return false;
  *dims = dims_of(v);
  return true;
}

OrtStatusPtr GqaKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Ort::KernelContext ctx(context);
    iceformer::GqaInputDims d;
    iceformer::GqaParams g;
    g.Hq = cfg.Hq, g.Hkv = cfg.Hkv, g.rotary = cfg.rotary, g.interleaved = cfg.interleaved, g.causal = cfg.causal;
    g.scale = cfg.scale, g.softcap = cfg.softcap, g.window = cfg.window, g.knn = cfg.knn;
    cfg.heads.bind(&g.knn);
    g.indexes = &indexes;
    gqa_input(ctx, 0, &d.query);
    d.has_key = gqa_input(ctx, 1, &d.key);
    d.has_value = gqa_input(ctx, 2, &d.value);
    d.has_past_key = gqa_input(ctx, 3, &d.past_key);
    d.has_past_value = gqa_input(ctx, 4, &d.past_value);
    if (!gqa_input(ctx, 5, &d.seqlens_k) || !gqa_input(ctx, 6, &d.total))
      return gqa_error("inputs seqlens_k and total_sequence_length are required");
    d.has_cos = gqa_input(ctx, 7, &d.cos);
    d.has_sin = gqa_input(ctx, 8, &d.sin);
    for (size_t i : {5, 6})
      if (ctx.GetInput(i).GetTensorTypeAndShapeInfo().GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
        return gqa_error(std::string("input ") + iceformer::kGqaInputs[i].name + " must be int32");
    if (Ort::ConstValue total = ctx.GetInput(6); total.GetTensorTypeAndShapeInfo().GetElementCount() == 1)
      g.total = *total.GetTensorData<int32_t>();
    if (Status s = iceformer::resolve_gqa_shapes(d, &g); !s.ok()) return make_error(s);

    g.query = ctx.GetInput(0).GetTensorData<float>();
    if (d.has_key) g.key = ctx.GetInput(1).GetTensorData<float>(), g.value = ctx.GetInput(2).GetTensorData<float>();
    if (d.has_past_key)
      g.past_key = ctx.GetInput(3).GetTensorData<float>(), g.past_value = ctx.GetInput(4).GetTensorData<float>();
    g.seqlens_k = ctx.GetInput(5).GetTensorData<int32_t>();
    if (g.rotary)
      g.cos_cache = ctx.GetInput(7).GetTensorData<float>(), g.sin_cache = ctx.GetInput(8).GetTensorData<float>();
    g.output = ctx.GetOutput(0, {g.B, g.S, g.Hq * g.D}).GetTensorMutableData<float>();
    const std::vector<int64_t> present_dims{g.B, g.Hkv, g.present_rows, g.D};
    SessionArena arena(context);
    iceformer::HostBuffer<float> own_k(arena.mem), own_v(arena.mem);  // when present outputs are not wanted
    if (ctx.GetOutputCount() >= 3) {
      g.present_key = ctx.GetOutput(1, present_dims).GetTensorMutableData<float>();
      g.present_value = ctx.GetOutput(2, present_dims).GetTensorMutableData<float>();
    } else {
      const size_t n = static_cast<size_t>(g.B * g.Hkv * g.present_rows * g.D);
      if (!own_k.allocate(n) || !own_v.allocate(n))
        return make_error(iceformer::out_of_memory("GroupQueryAttention", "the present key/value", 2 * n * 4,
                                                   "present [B,Hkv,rows,D] = " + std::to_string(g.B) + "x" +
                                                       std::to_string(g.Hkv) + "x" + std::to_string(g.present_rows) +
                                                       "x" + std::to_string(g.D)));
      g.present_key = own_k.data(), g.present_value = own_v.data();
    }
    iceformer::Parallel par{&ctx, host_parallel_for};
    iceformer::CallStats stats;
    if (Status s = iceformer::run_gqa(g, par, arena.mem, &stats); !s.ok()) return make_error(s);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::bad_alloc&) {
    return make_error(Status::OutOfMemory("GroupQueryAttention: out of memory"));
  } catch (const std::exception& e) {
    return gqa_error(e.what());
  }
}

// What the op does not support is refused when the session is created, by name.
bool gqa_refuse(const OrtApi& api, const OrtKernelInfo* info, std::string* err) {
  size_t n_in = 0, n_out = 0;
  for (OrtStatus* st : {api.KernelInfo_GetInputCount(info, &n_in), api.KernelInfo_GetOutputCount(info, &n_out)})
    if (st != nullptr) api.ReleaseStatus(st);  // counts stay 0: nothing is refused for want of a connection
  auto connected = [&](bool input, size_t i) {
    size_t len = 0;
    OrtStatus* st = input ? api.KernelInfo_GetInputName(info, i, nullptr, &len)
                          : api.KernelInfo_GetOutputName(info, i, nullptr, &len);
    if (st != nullptr) {
      api.ReleaseStatus(st);
      return false;
    }
    return len > 1;  // the size includes the terminating NUL: "" has size 1
  };
  for (size_t i = iceformer::kGqaNumInputs; i < n_in; ++i)
    if (connected(true, i)) {
      *err = std::string("input ") + iceformer::kGqaRefusedInputs[i - iceformer::kGqaNumInputs] +
             " is not supported by iceformer's GroupQueryAttention";
      return true;
    }
  if (n_out > 3 && connected(false, 3)) {
    *err = "output output_qk (qk_output) is not supported";
    return true;
  }
  return false;
}

struct GqaOp : Ort::CustomOpBase<GqaOp, GqaKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    GqaConfig c;
    std::string err;
    bool present = false;
    using iceformer::kGqaAttrs;
    const iceformer::AttrSpec* ints[8] = {
        &CONTRACT_ATTR(kGqaAttrs, "num_heads"),          &CONTRACT_ATTR(kGqaAttrs, "kv_num_heads"),
        &CONTRACT_ATTR(kGqaAttrs, "local_window_size"),  &CONTRACT_ATTR(kGqaAttrs, "do_rotary"),
        &CONTRACT_ATTR(kGqaAttrs, "rotary_interleaved"), &CONTRACT_ATTR(kGqaAttrs, "causal"),
        &CONTRACT_ATTR(kGqaAttrs, "smooth_softmax"),     &CONTRACT_ATTR(kGqaAttrs, "qk_output")};
    int64_t v[8] = {};
    const char* names[8] = {};
    for (int i = 0; i < 8; ++i) {
      names[i] = ints[i]->name;
      if (!read_attr(api, info, *ints[i], &v[i], &present, &err)) return gqa_error(err);
      if (!ints[i]->has_default && !present) return gqa_error(std::string("attribute ") + names[i] + " is required");
    }
    int64_t sliding_cache = 0;
    if (!read_attr(api, info, CONTRACT_ATTR(kGqaAttrs, "sliding_window_cache"), &sliding_cache, &present, &err))
      return gqa_error(err);
    if (!read_attr(api, info, CONTRACT_ATTR(kGqaAttrs, "scale"), &c.scale, &present, &err) ||
        !read_attr(api, info, CONTRACT_ATTR(kGqaAttrs, "softcap"), &c.softcap, &present, &err))
      return gqa_error(err);
    c.Hq = v[0], c.Hkv = v[1], c.window = v[2];
    if (c.Hq < 1 || c.Hkv < 1 || c.Hq % c.Hkv != 0)
      return gqa_error("num_heads = " + std::to_string(c.Hq) +
                       " must be a positive multiple of kv_num_heads = " + std::to_string(c.Hkv));
    if (c.window == 0 || c.window < -1)
      return gqa_error("local_window_size = " + std::to_string(c.window) + " is invalid, expected -1 or >= 1");
    for (int i = 3; i < 6; ++i)
      if (v[i] != 0 && v[i] != 1)
        return gqa_error(std::string(names[i]) + " = " + std::to_string(v[i]) + ", expected 0 or 1");
    if (v[6] != 0) return gqa_error("smooth_softmax = 1 is not supported");
    if (v[7] != 0) return gqa_error("qk_output is not supported");
    if (sliding_cache != 0) return gqa_error("sliding_window_cache = 1 (a window-sized KV cache) is not supported");
    if (v[5] == 0 && c.window != -1) return gqa_error("local_window_size needs causal = 1");
    if (!std::isfinite(c.scale) || !std::isfinite(c.softcap) || c.softcap < 0.f)
      return gqa_error("scale and softcap must be finite, softcap >= 0");
    c.rotary = v[3] == 1, c.interleaved = v[4] == 1, c.causal = v[5] == 1;
    if (gqa_refuse(api, info, &err)) return gqa_error(err);
    if (!read_knn_attrs(api, info, &c.knn, &c.heads, &err)) return gqa_error(err);
    if (Status s = iceformer::check_head_values(c.heads, c.Hq); !s.ok()) return gqa_error(s.message());
    try {
      *kernel = new GqaKernel(c);
    } catch (const std::exception& e) {
      return gqa_error(e.what());
    }
    return nullptr;
  }

  const char* GetName() const { return iceformer::kGqaOpName; }
  size_t GetInputTypeCount() const { return iceformer::kGqaDeclaredInputs; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    if (i == 5 || i == 6) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    return i < iceformer::kGqaNumInputs ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < iceformer::kGqaNumInputs && !iceformer::kGqaInputs[i].optional
               ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED
               : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const {
    return i == 0 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED
                  : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL;
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
                            "), but the loaded runtime is " + api_base->GetVersionString() + ": upgrade onnxruntime";
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest->CreateStatus(ORT_FAIL, msg.c_str());
  }
  Ort::InitApi(api);
  if (const std::string bad = iceformer::simd_env_error(); !bad.empty())
    return api->CreateStatus(ORT_INVALID_ARGUMENT, ("iceformer: " + bad).c_str());
  static KnnAttentionOp op;
  static GqaOp gqa_op;
  std::lock_guard<std::mutex> lock(g_mutex);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain(iceformer::kDomain, &domain)) return st;
  for (OrtCustomOp* o : {static_cast<OrtCustomOp*>(&op), static_cast<OrtCustomOp*>(&gqa_op)})
    if (OrtStatus* st = api->CustomOpDomain_Add(domain, o)) {
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

ICE_EXPORT const char* IceformerGqaContractJson() {
  static const std::string s = iceformer::gqa_contract_json();
  return s.c_str();
}

ICE_EXPORT const char* IceformerSimdVariant() { return iceformer::kernels().name; }

// 1 when the dispatched tier runs the k-NN path's P V in bfloat16, else 0 (fp32).
ICE_EXPORT int IceformerSimdPvBf16() { return iceformer::kernels().pv_bf16 ? 1 : 0; }

// The tiers this CPU runs, best first, comma-separated; and why ICEFORMER_SIMD cannot be honoured ("" if it can).
ICE_EXPORT const char* IceformerSimdTiers() {
  static const std::string s = iceformer::simd_tiers();
  return s.c_str();
}

ICE_EXPORT const char* IceformerSimdEnvError() {
  static const std::string s = iceformer::simd_env_error();
  return s.c_str();
}

// 1 when built with ICEFORMER_SANITIZE (AddressSanitizer): hosts then run without ORT's CPU arena, so each
// tensor is its own malloc block with red zones around it.
ICE_EXPORT int IceformerSanitized() {
#if defined(__SANITIZE_ADDRESS__)
  return 1;
#else
  return 0;
#endif
}

}  // extern "C"
