#include "dci_index.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "float_order.h"
#include "masking.h"
#include "rng.h"
#include "simd.h"

namespace iceformer {

std::vector<float> make_directions(int64_t seed, int64_t lists, int64_t D) {
  std::vector<float> u(lists * (D + 1));
  Rng rng(Rng::mix(static_cast<uint64_t>(seed) + 0x243f6a8885a308d3ULL));
  for (int64_t l = 0; l < lists; ++l) {
    double norm = 0;
    for (int64_t d = 0; d <= D; ++d) {
      const double g = rng.normal();
      u[l * (D + 1) + d] = static_cast<float>(g);
      norm += g * g;
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(norm));
    for (int64_t d = 0; d <= D; ++d) u[l * (D + 1) + d] *= inv;
  }
  return u;
}

void project_keys(const AttentionParams& p, const std::vector<float>& dirs, int64_t b, int64_t hkv, DciIndexSet* set) {
  const Kernels& kern = kernels();
  const int64_t T = p.shape.T, D = p.shape.D, lists = set->lists;
  const int64_t bh = b * p.shape.Hkv + hkv;
  const float* k = p.key_rows(b, hkv);
  float* proj = set->proj.data() + bh * lists * set->stride;
  int32_t* ids = set->ids.data() + bh * lists * set->stride;
  // c = max |k| over real keys; NaN/inf norms are treated as the largest projection (never a crash).
  float c2 = 0.f;
  int64_t n = 0;
  for (int64_t j = 0; j < T; ++j) {
    if (!key_is_real(p.key_padding, T, b, j)) continue;
    const float nn = kern.dot(k + j * D, k + j * D, D);
    if (nn > c2) c2 = nn;
    ids[n++] = static_cast<int32_t>(j);
  }
  set->count[bh] = n;
  const float inv_c = c2 > 0.f && std::isfinite(c2) ? 1.f / std::sqrt(c2) : 1.f;
  for (int64_t t = 0; t < n; ++t) {
    const float* kj = k + static_cast<int64_t>(ids[t]) * D;
    const float r2 = kern.dot(kj, kj, D) * inv_c * inv_c;
    const float tail = std::sqrt(std::max(0.f, 1.f - r2));  // the extra (D+1)th coordinate
    for (int64_t l = 0; l < lists; ++l) {
      const float* u = dirs.data() + l * (D + 1);
      float v = kern.dot(kj, u, D) * inv_c + tail * u[D];
      if (std::isnan(v)) v = std::numeric_limits<float>::infinity();
      proj[l * set->stride + t] = v;
    }
  }
  for (int64_t l = 1; l < lists; ++l) std::memcpy(ids + l * set->stride, ids, n * sizeof(int32_t));
}

namespace {

// The sort keys: float_order.h's map (NaN was replaced by +inf before).
inline uint32_t float_key(float f) { return ordered_key(f); }
inline float key_float(uint32_t u) { return ordered_float(u); }

struct SortScratch {
  std::vector<uint32_t> k0, k1;
  std::vector<int32_t> i1;
};
thread_local SortScratch t_sort;

}  // namespace

void sort_list(DciIndexSet* set, int64_t bh, int64_t list) {
  const int64_t n = set->count[bh];
  float* proj = set->proj.data() + (bh * set->lists + list) * set->stride;
  int32_t* ids = set->ids.data() + (bh * set->lists + list) * set->stride;
  SortScratch& s = t_sort;
  if (static_cast<int64_t>(s.k0.size()) < n) {
    s.k0.resize(n);
    s.k1.resize(n);
    s.i1.resize(n);
  }
  for (int64_t t = 0; t < n; ++t) s.k0[t] = float_key(proj[t]);
  // LSD radix sort, 3 passes of 11 bits; stable, so equal projections keep T order (deterministic).
  uint32_t* ka = s.k0.data();
  uint32_t* kb = s.k1.data();
  int32_t* ia = ids;
  int32_t* ib = s.i1.data();
  for (int shift = 0; shift < 33; shift += 11) {
    uint32_t hist[2048] = {0};
    for (int64_t t = 0; t < n; ++t) ++hist[(ka[t] >> shift) & 2047u];
    uint32_t sum = 0;
    for (uint32_t& h : hist) {
      const uint32_t c = h;
      h = sum;
      sum += c;
    }
    for (int64_t t = 0; t < n; ++t) {
      const uint32_t pos = hist[(ka[t] >> shift) & 2047u]++;
      kb[pos] = ka[t];
      ib[pos] = ia[t];
    }
    std::swap(ka, kb);
    std::swap(ia, ib);
  }
  // Three passes: the result sits in the scratch buffers.
  for (int64_t t = 0; t < n; ++t) {
    proj[t] = key_float(ka[t]);
    ids[t] = ia[t];
  }
}

}  // namespace iceformer
