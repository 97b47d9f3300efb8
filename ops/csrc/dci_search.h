// The prioritized walk of Prioritized DCI for one query.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "epoch_set.h"
#include "dci_index.h"

namespace iceformer {

struct SearchScratch {
  std::vector<EpochCounter> counts;  // one per composite index
  EpochSet candidate;
  std::vector<int64_t> lo, hi;  // per list: next unvisited rank going down / up
  std::vector<float> qproj;     // query projection per list
  std::vector<int32_t> found;   // candidates, in retrieval order
};

// Walks the L composite indices (m lists each) outward from the query's projections. In each round every
// composite visits the key with the smallest projection gap among its m lists' two frontiers; a key seen in
// all m lists of a composite becomes a candidate. Keys failing `visible` (causal limit, mask) are passed
// over; keys in `exclude` (already attended) are not returned. Stops at `budget` candidates or `max_steps`
// visits. Results in sc.found.
template <typename Visible>
void dci_search(const DciIndexView& idx, int64_t L, int64_t m, int64_t T, int64_t budget, int64_t max_steps,
                const Visible& visible, const EpochSet& exclude, SearchScratch& sc) {
  sc.found.clear();
  const int64_t n = idx.n, lists = L * m;
  if (n == 0 || budget <= 0) return;
  if (static_cast<int64_t>(sc.counts.size()) < L) sc.counts.resize(L);
  sc.lo.resize(lists);
  sc.hi.resize(lists);
  for (int64_t l = 0; l < L; ++l) sc.counts[l].begin(T);
  sc.candidate.begin(T);
  for (int64_t t = 0; t < lists; ++t) {
    const float* pr = idx.proj + t * idx.stride;
    const int64_t pos = std::lower_bound(pr, pr + n, sc.qproj[t]) - pr;
    sc.lo[t] = pos - 1;
    sc.hi[t] = pos;
  }
  int64_t active = L, steps = 0;
  uint64_t done = 0;  // bit l: composite l exhausted
  while (static_cast<int64_t>(sc.found.size()) < budget && steps < max_steps && active > 0) {
    for (int64_t l = 0; l < L; ++l) {
      if (done >> l & 1u) continue;
      float best = std::numeric_limits<float>::infinity();
      int64_t bt = -1;
      bool up = false;
      for (int64_t i = 0; i < m; ++i) {
        const int64_t t = l * m + i;
        const float* pr = idx.proj + t * idx.stride;
        if (sc.lo[t] >= 0) {
          const float g = sc.qproj[t] - pr[sc.lo[t]];
          if (g < best || bt < 0) best = g, bt = t, up = false;
        }
        if (sc.hi[t] < n) {
          const float g = pr[sc.hi[t]] - sc.qproj[t];
          if (g < best || bt < 0) best = g, bt = t, up = true;
        }
      }
      if (bt < 0) {
        done |= uint64_t(1) << l;
        --active;
        continue;
      }
      const int64_t rank = up ? sc.hi[bt]++ : sc.lo[bt]--;
      const int32_t j = idx.ids[bt * idx.stride + rank];
      ++steps;
      if (!visible(j)) continue;
      if (static_cast<int64_t>(sc.counts[l].increment(j)) == m && !exclude.contains(j) && sc.candidate.insert(j)) {
        sc.found.push_back(j);
        if (static_cast<int64_t>(sc.found.size()) >= budget) break;
      }
    }
  }
}

}  // namespace iceformer
