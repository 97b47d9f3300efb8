#include "key_clusters.h"

#include <algorithm>
#include <limits>

#include "rng.h"

namespace iceformer {
namespace {

constexpr int64_t kTrainPerCluster = 24;  // k-means trains on an even sample of this many keys per cluster
constexpr int kIterations = 6;
constexpr int64_t kChunk = 64;  // keys scored against the centroids per tile

struct ClusterScratch {
  std::vector<float> cent, half_norm, rows, s;
  std::vector<double> sum;
  std::vector<int64_t> count;
  std::vector<int32_t> train, assign;
};
thread_local ClusterScratch t_cl;

// Centroids (C x r, row-major) -> panels of 16 (simd.h layout, D = r; lanes past C zero) and half squared norms
// (+inf past C, so that padding lanes never win).
void pack_centroids(ClusterScratch& sc, int64_t C, int64_t r, float* panels) {
  const int64_t npc = (C + kPanel - 1) / kPanel;
  std::fill(panels, panels + npc * kPanel * r, 0.f);
  sc.half_norm.assign(npc * kPanel, std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < C; ++c) {
    double nn = 0;
    for (int64_t d = 0; d < r; ++d) {
      const float x = sc.cent[c * r + d];
      panels[(c / kPanel) * r * kPanel + d * kPanel + c % kPanel] = x;
      nn += static_cast<double>(x) * x;
    }
    sc.half_norm[c] = static_cast<float>(0.5 * nn);
  }
}

// assign[t] = nearest centroid of key ids[t]: argmax_c k . c - |c|^2 / 2 (first on ties).
void assign_keys(ClusterScratch& sc, const float* kr, int64_t r, const int32_t* ids, int64_t n, int64_t C,
                 const float* panels, int32_t* assign) {
  const Kernels& kern = kernels();
  const int64_t npc = (C + kPanel - 1) / kPanel, width = npc * kPanel;
  sc.rows.resize(kChunk * r);
  sc.s.resize(kChunk * width);
  for (int64_t t0 = 0; t0 < n; t0 += kChunk) {
    const int64_t rows = std::min(kChunk, n - t0);
    for (int64_t t = 0; t < rows; ++t) std::copy_n(kr + static_cast<int64_t>(ids[t0 + t]) * r, r, sc.rows.data() + t * r);
    kern.qk_tile(sc.rows.data(), r, rows, panels, r, npc, sc.s.data(), width);
    for (int64_t t = 0; t < rows; ++t) {
      const float* s = sc.s.data() + t * width;
      int32_t best = 0;
      float best_v = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < C; ++c) {
        const float v = s[c] - sc.half_norm[c];
        if (v > best_v) best_v = v, best = static_cast<int32_t>(c);
      }
      assign[t0 + t] = best;
    }
  }
}

}  // namespace

int64_t cluster_count(int64_t n_real) {
  return n_real < kMinClusters * kKeysPerCluster ? 0 : (n_real + kKeysPerCluster - 1) / kKeysPerCluster;
}

int64_t cluster_panels_size(int64_t T, int64_t r4) {
  // Every cluster may waste up to one partial panel.
  return ((T + kPanel - 1) / kPanel + cluster_count(T)) * r4 * 64;
}

void build_key_clusters(const float* kr, int64_t r, int64_t r4, const int32_t* ids, int64_t n, const uint8_t* kb,
                        uint64_t seed, KeyClusterOut* out) {
  const int64_t C = cluster_count(n);
  out->C = C;
  if (C == 0) return;
  float* centroids = out->centroids;
  int32_t *start = out->start, *order = out->order, *panel = out->panel;
  uint8_t* panels = out->panels;
  ClusterScratch& sc = t_cl;
  // Training sample: evenly spaced over the keys; initial centroids evenly spaced over the sample, seeded offset.
  const int64_t ns = std::min(n, C * kTrainPerCluster);
  sc.train.resize(ns);
  for (int64_t t = 0; t < ns; ++t) sc.train[t] = ids[t * n / ns];
  Rng rng(Rng::mix(seed ^ 0x3c6ef372fe94f82bULL));
  const int64_t offset = static_cast<int64_t>(rng.uniform() * static_cast<double>(ns / C));
  sc.cent.resize(C * r);
  for (int64_t c = 0; c < C; ++c)
    std::copy_n(kr + static_cast<int64_t>(sc.train[c * ns / C + offset]) * r, r, sc.cent.data() + c * r);
  sc.assign.resize(std::max(n, ns));
  for (int it = 0; it < kIterations; ++it) {
    pack_centroids(sc, C, r, centroids);
    assign_keys(sc, kr, r, sc.train.data(), ns, C, centroids, sc.assign.data());
    // Lloyd step in double; an emptied cluster keeps its centroid.
    sc.sum.assign(C * r, 0.0);
    sc.count.assign(C, 0);
    for (int64_t t = 0; t < ns; ++t) {
      const float* k = kr + static_cast<int64_t>(sc.train[t]) * r;
      double* acc = sc.sum.data() + sc.assign[t] * r;
      for (int64_t d = 0; d < r; ++d) acc[d] += k[d];
      ++sc.count[sc.assign[t]];
    }
    for (int64_t c = 0; c < C; ++c)
      if (sc.count[c] > 0)
        for (int64_t d = 0; d < r; ++d)
          sc.cent[c * r + d] = static_cast<float>(sc.sum[c * r + d] / static_cast<double>(sc.count[c]));
  }
  pack_centroids(sc, C, r, centroids);
  assign_keys(sc, kr, r, ids, n, C, centroids, sc.assign.data());

  // Counting sort by cluster (stable: ids ascending stay ascending inside a cluster), then the panels.
  sc.count.assign(C, 0);
  for (int64_t t = 0; t < n; ++t) ++sc.count[sc.assign[t]];
  start[0] = 0;
  int32_t next_panel = 0;
  for (int64_t c = 0; c < C; ++c) {
    start[c + 1] = start[c] + static_cast<int32_t>(sc.count[c]);
    panel[c] = next_panel;
    next_panel += static_cast<int32_t>((sc.count[c] + kPanel - 1) / kPanel);
  }
  std::vector<int64_t>& fill = sc.count;
  for (int64_t c = 0; c < C; ++c) fill[c] = start[c];
  for (int64_t t = 0; t < n; ++t) order[fill[sc.assign[t]]++] = ids[t];
  std::fill(panels, panels + static_cast<int64_t>(next_panel) * r4 * 64, uint8_t{0});
  for (int64_t c = 0; c < C; ++c)
    for (int64_t u = 0; u < start[c + 1] - start[c]; ++u) {
      const int64_t j = order[start[c] + u];
      const uint8_t* src = kb + (j / kPanel) * r4 * 64 + 4 * (j % kPanel);
      uint8_t* dst = panels + (panel[c] + u / kPanel) * r4 * 64 + 4 * (u % kPanel);
      for (int64_t g = 0; g < r4; ++g) std::copy_n(src + g * 64, 4, dst + g * 64);
    }
}

}  // namespace iceformer
