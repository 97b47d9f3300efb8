#include "contract.h"

#include <sstream>

namespace iceformer {
namespace {

const char* dtypes_json(DType d) {
  switch (d) {
    case DType::kFloat:
      return "[\"float\"]";
    case DType::kFloatOrBool:
      return "[\"bool\",\"float\"]";
    case DType::kBoolOrInt:
      return "[\"bool\",\"int32\",\"int64\"]";
    case DType::kInt32:
      return "[\"int32\"]";
  }
  return "[]";
}

void attr_json(std::ostringstream& o, const AttrSpec& a, bool comma) {
  o << (comma ? "," : "") << "{\"name\":\"" << a.name << "\",\"type\":\""
    << (a.type == 'i'   ? "int"
        : a.type == 'I' ? "ints"
                        : "float")
    << "\",\"default\":";
  if (!a.has_default)
    o << "null";
  else if (a.type == 'I')
    o << "[]";
  else if (a.type == 'i')
    o << static_cast<long long>(a.default_value);
  else
    o << a.default_value;
  o << "}";
}

// {"domain", "op", "version", "inputs", "outputs", "attributes"} of one op; extra attributes appended after attrs.
std::string op_json(const char* op, const InputSpec* inputs, int n_inputs, const char* outputs, const AttrSpec* attrs,
                    int n_attrs, const AttrSpec* extra, int n_extra) {
  std::ostringstream o;
  o.precision(17);
  o << "{\"domain\":\"" << kDomain << "\",\"op\":\"" << op << "\",\"version\":" << kOpVersion << ",\"inputs\":[";
  for (int i = 0; i < n_inputs; ++i) {
    const InputSpec& in = inputs[i];
    o << (i ? "," : "") << "{\"name\":\"" << in.name << "\",\"shape\":\"" << in.shape
      << "\",\"dtypes\":" << dtypes_json(in.dtype) << ",\"optional\":" << (in.optional ? "true" : "false") << "}";
  }
  o << "],\"outputs\":" << outputs << ",\"attributes\":[";
  for (int i = 0; i < n_attrs; ++i) attr_json(o, attrs[i], i > 0);
  for (int i = 0; i < n_extra; ++i) attr_json(o, extra[i], n_attrs + i > 0);
  o << "]}";
  return o.str();
}

}  // namespace

std::string contract_json() {
  return op_json(kOpName, kInputs, kNumInputs, "[{\"name\":\"Y\",\"shape\":\"B,Hq,S,Dv\",\"dtypes\":[\"float\"]}]",
                 kAttrs, kNumAttrs, nullptr, 0);
}

std::string gqa_contract_json() {
  return op_json(kGqaOpName, kGqaInputs, kGqaNumInputs,
                 "[{\"name\":\"output\",\"shape\":\"B,S,Hq*D\",\"dtypes\":[\"float\"]},"
                 "{\"name\":\"present_key\",\"shape\":\"B,Hkv,T',D\",\"dtypes\":[\"float\"]},"
                 "{\"name\":\"present_value\",\"shape\":\"B,Hkv,T',D\",\"dtypes\":[\"float\"]}]",
                 kGqaAttrs, kGqaNumAttrs, kAttrs + kFirstKnnAttr, kNumAttrs - kFirstKnnAttr);
}

}  // namespace iceformer
