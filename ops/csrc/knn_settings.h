// KnnSettings from the contract: where each scalar k-NN attribute (kAttrs[kFirstKnnAttr..], in contract order) lands
// in the struct (the per-head lists after them in HeadValues), checked at compile time against the contract's names,
// types and defaults. The op's attribute reading (registration.cc) and the introspection entry (introspect.cc) both
// fill KnnSettings through this table.
#pragma once
#include <cstdint>
#include <vector>

#include "contract.h"
#include "params.h"

namespace iceformer {

struct KnnField {
  const char* name;
  int64_t KnnSettings::* i;  // the field, when the attribute is an int
  float KnnSettings::* f;    // the field, when it is a float
};

constexpr KnnField kKnnFields[] = {
    {"top_k", &KnnSettings::top_k, nullptr},
    {"search", &KnnSettings::search, nullptr},
    {"rank", &KnnSettings::rank, nullptr},
    {"L", &KnnSettings::num_composite, nullptr},
    {"m", &KnnSettings::num_simple, nullptr},
    {"max_candidates", &KnnSettings::max_candidates, nullptr},
    {"candidate_fraction", nullptr, &KnnSettings::candidate_fraction},
    {"min_keys", &KnnSettings::min_keys, nullptr},
    {"decode_min_keys", &KnnSettings::decode_min_keys, nullptr},
    {"local_window", &KnnSettings::recent_keys, nullptr},
    {"num_sink", &KnnSettings::num_sink, nullptr},
    {"tail_samples", &KnnSettings::tail_samples, nullptr},
    {"tail_limit", nullptr, &KnnSettings::tail_limit},
    {"seed", &KnnSettings::seed, nullptr},
    {"auto_window", &KnnSettings::auto_window, nullptr},
    {"auto_window_error", nullptr, &KnnSettings::auto_window_error},
};
constexpr int kNumKnnFields = sizeof(kKnnFields) / sizeof(kKnnFields[0]);

// The per-head list attributes (kAttrs' last kNumHeadAttrs entries) and where each lands in HeadValues.
struct HeadField {
  const char* name;
  std::vector<int64_t> HeadValues::* values;
};
constexpr HeadField kHeadFields[] = {
    {"head_budgets", &HeadValues::budgets},
    {"head_tail_samples", &HeadValues::tail_samples},
    {"head_windows", &HeadValues::windows},
};
constexpr int kFirstHeadAttr = kFirstKnnAttr + kNumKnnFields;

constexpr bool head_fields_follow_contract() {
  if (sizeof(kHeadFields) / sizeof(kHeadFields[0]) != kNumHeadAttrs || kFirstHeadAttr + kNumHeadAttrs != kNumAttrs)
    return false;
  for (int i = 0; i < kNumHeadAttrs; ++i)
    if (!same_name(kAttrs[kFirstHeadAttr + i].name, kHeadFields[i].name) || kAttrs[kFirstHeadAttr + i].type != 'I')
      return false;
  return true;
}
static_assert(head_fields_follow_contract(), "kHeadFields disagree with the contract's list attributes (kAttrs)");

constexpr bool knn_fields_follow_contract() {
  if (kNumKnnFields != kNumAttrs - kFirstKnnAttr - kNumHeadAttrs) return false;
  const KnnSettings defaults{};
  for (int i = 0; i < kNumKnnFields; ++i) {
    const AttrSpec& a = kAttrs[kFirstKnnAttr + i];
    const KnnField& f = kKnnFields[i];
    if (!same_name(a.name, f.name) || (a.type == 'i') != (f.i != nullptr)) return false;
    if (f.i != nullptr ? static_cast<double>(defaults.*(f.i)) != a.default_value
                       : defaults.*(f.f) != static_cast<float>(a.default_value))
      return false;
  }
  return true;
}
static_assert(knn_fields_follow_contract(), "kKnnFields / KnnSettings defaults disagree with the contract (kAttrs)");

// Settings from one value per k-NN attribute, in contract order (ints given as whole numbers).
inline KnnSettings knn_settings_from(const double* values) {
  KnnSettings k;
  for (int i = 0; i < kNumKnnFields; ++i) {
    if (kKnnFields[i].i != nullptr)
      k.*(kKnnFields[i].i) = static_cast<int64_t>(values[i]);
    else
      k.*(kKnnFields[i].f) = static_cast<float>(values[i]);
  }
  return k;
}

}  // namespace iceformer
