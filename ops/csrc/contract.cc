#include "contract.h"

#include <sstream>

namespace iceformer {

std::string contract_json() {
  std::ostringstream o;
  o.precision(17);
  o << "{\"domain\":\"" << kDomain << "\",\"op\":\"" << kOpName << "\",\"version\":" << kOpVersion
    << ",\"inputs\":[";
  for (int i = 0; i < kNumInputs; ++i) {
    const InputSpec& in = kInputs[i];
    const char* dt = in.dtype == DType::kFloat ? "[\"float\"]"
                     : in.dtype == DType::kFloatOrBool ? "[\"bool\",\"float\"]"
                                                       : "[\"bool\",\"int32\",\"int64\"]";
    o << (i ? "," : "") << "{\"name\":\"" << in.name << "\",\"shape\":\"" << in.shape << "\",\"dtypes\":" << dt
      << ",\"optional\":" << (in.optional ? "true" : "false") << "}";
  }
  o << "],\"outputs\":[{\"name\":\"Y\",\"shape\":\"B,Hq,S,Dv\",\"dtypes\":[\"float\"]}],\"attributes\":[";
  for (int i = 0; i < kNumAttrs; ++i) {
    const AttrSpec& a = kAttrs[i];
    o << (i ? "," : "") << "{\"name\":\"" << a.name << "\",\"type\":\"" << (a.type == 'i' ? "int" : "float")
      << "\",\"default\":";
    if (!a.has_default)
      o << "null";
    else if (a.type == 'i')
      o << static_cast<long long>(a.default_value);
    else
      o << a.default_value;
    o << "}";
  }
  o << "]}";
  return o.str();
}

}  // namespace iceformer
