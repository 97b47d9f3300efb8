// Prioritized-DCI index over the keys of one (batch, KV head).
//
// Keys become unit vectors in D+1 dims, T_K(k) = [k / c ; sqrt(1 - |k|^2 / c^2)] with c = max |k|, and
// queries T_Q(q) = [q / |q| ; 0], so |T_Q(q) - T_K(k)|^2 = 2 - 2 q.k / (c |q|): nearest = largest q.k.
// L composite indices of m simple indices each: a simple index is one seeded random unit direction u with
// the keys sorted by <T_K(k), u>, stored flat (sorted projections + key ids).
#pragma once
#include <cstdint>
#include <vector>

#include "params.h"

namespace iceformer {

// The L*m random unit directions in R^(D+1), row-major [L*m][D+1]; a function of (seed, D) only.
std::vector<float> make_directions(int64_t seed, int64_t lists, int64_t D);

struct DciIndexView {
  int64_t n = 0;                 // keys indexed (real keys of this batch row)
  int64_t lists = 0;             // L*m
  int64_t stride = 0;            // distance between lists (>= n)
  const float* proj = nullptr;   // [lists][stride], the first n sorted ascending
  const int32_t* ids = nullptr;  // [lists][stride], key index in T order
};

// Storage for all (batch, KV head) indices of one call.
struct DciIndexSet {
  int64_t lists = 0, stride = 0;  // stride = T: room per list
  std::vector<float> proj;
  std::vector<int32_t> ids;
  std::vector<int64_t> count;  // keys indexed per (b, hkv)
  DciIndexView view(int64_t bh) const {
    return {count[bh], lists, stride, proj.data() + bh * lists * stride, ids.data() + bh * lists * stride};
  }
};

// Step 1 for (b, hkv): projections of all real keys on all directions (unsorted), ids in T order.
void project_keys(const AttentionParams& p, const std::vector<float>& dirs, int64_t b, int64_t hkv, DciIndexSet* set);
// Step 2 for one list of (b, hkv): sort it (radix sort on the order-preserving integer image of floats).
void sort_list(DciIndexSet* set, int64_t bh, int64_t list);

}  // namespace iceformer
