// Key clusters of one (batch, KV head), the inverted file that prunes the low-rank scan.
//
// k-means (Euclidean, in the rank-r space of lowrank.h) groups the real keys into C ~ n / kKeysPerCluster clusters;
// the keys are stored again cluster by cluster (ascending key id inside a cluster, each cluster starting on a
// 16-key panel), so that a query block that sees every key scores only the clusters whose centroids some of its
// rows rank highest (lowrank.cc: probed_scan). Measured on SmolLM2-135M at 16384 keys (256 clusters): the clusters
// ranked in the top 10% by q . centroid for any row of a 64-row block hold 16-30% of the keys and 97.7-98.5% of
// those rows' exact top-128 keys; the keys ranked below the top 128 that they miss still cost output accuracy
// (README: probe).
#pragma once
#include <cstdint>
#include <vector>

#include "simd.h"

namespace iceformer {

constexpr int64_t kKeysPerCluster = 64;
// Fewer real keys than kMinClusters * kKeysPerCluster: no clusters (the scan is cheap there, and coarse clusters
// lose recall: at 2048 keys, 32 clusters, recall@32 of SmolLM2 layer 13 fell from 0.98 to 0.94).
constexpr int64_t kMinClusters = 64;

// One head's clusters (C = 0: none), in arrays owned by a LowRankSet (lowrank.h).
template <typename F, typename I, typename U>
struct ClusterArrays {
  int64_t C = 0;
  F* centroids = nullptr;  // ceil(C / 16) panels of 16 centroids, r floats each (simd.h panel layout, D = r)
  I* start = nullptr;      // [C + 1]: cluster c holds order[start[c], start[c + 1])
  I* order = nullptr;      // key ids, cluster by cluster, ascending inside a cluster
  I* panel = nullptr;      // [C]: first panel of cluster c in `panels`
  U* panels = nullptr;     // the keys' 8-bit coordinates in cluster order (simd.h layout), R4 words
};
using KeyClusterView = ClusterArrays<const float, const int32_t, const uint8_t>;
using KeyClusterOut = ClusterArrays<float, int32_t, uint8_t>;

// Sizes of one head's arrays for T keys (upper bounds: C for T real keys).
int64_t cluster_count(int64_t n_real);
inline int64_t centroid_floats(int64_t C, int64_t r) { return (C + kPanel - 1) / kPanel * kPanel * r; }
int64_t cluster_panels_size(int64_t T, int64_t r4);  // bytes per head

// Clusters the keys ids[0, n) (real, finite) whose rank-r coordinates are kr[id * r + c] into out (C set), with
// kb = the keys' 8-bit coordinates in the original order (simd.h layout). Deterministic for a given seed.
void build_key_clusters(const float* kr, int64_t r, int64_t r4, const int32_t* ids, int64_t n, const uint8_t* kb,
                        uint64_t seed, KeyClusterOut* out);

}  // namespace iceformer
