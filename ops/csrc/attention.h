// The op's driver: checks the parameters, picks the path (exact or k-NN), runs it over a task grid of
// (batch, head, query block) on the host's thread pool, and reports what it did.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "params.h"
#include "status.h"

namespace iceformer {

enum class PathTaken { kExact, kKnn, kEmpty };
const char* path_name(PathTaken p);

struct CallStats {
  PathTaken path = PathTaken::kEmpty;
  std::string reason;          // why this path
  double mean_candidates = 0;  // candidates scored exactly per query (k-NN path)
  double p99_candidates = 0;
  int64_t knn_rows = 0;       // query rows that took the k-NN path (fallback rows included)
  int64_t fallback_rows = 0;  // of those, rows recomputed exactly because their tail was too heavy
  double build_ms = 0, search_ms = 0, softmax_ms = 0, total_ms = 0;
};

// Shapes of Q, K, V -> AttentionShape, or an error naming the input, axis, expected and actual values.
Status resolve_shape(const std::vector<int64_t>& q, const std::vector<int64_t>& k, const std::vector<int64_t>& v,
                     AttentionShape* out);
// attn_mask dims (rank 1..4, right-aligned broadcast to [B,Hq,S,T]) -> element strides.
Status resolve_mask(const std::vector<int64_t>& dims, const AttentionShape& s, MaskView* out);
// key_padding_mask dims must be [B,T].
Status check_key_padding(const std::vector<int64_t>& dims, const AttentionShape& s);
// Attribute values (ranges; relations that need no shapes).
Status check_settings(const KnnSettings& k);

// Fewest visible keys for which a query row takes the k-NN path.
int64_t knn_threshold(const KnnSettings& k);
// The first row of [i0, i1) of (b, hq) that takes the k-NN path (i1: none); the rows before it see too few keys
// (causal prefixes, heavy padding). real_prefix[j] = real keys of batch row b in [0, j).
int64_t knn_first_row(const AttentionParams& p, const int64_t* real_prefix, int64_t b, int64_t hq, int64_t i0,
                      int64_t i1);

// A task failure (parallel_dynamic) as KnnAttention's error, with the call's sizes.
inline Status in_call(const Status& s, const AttentionShape& sh) {
  return s.wrapped("KnnAttention: ", " (" + sh.text() + ")");
}

// Computes p.y. Never throws; errors (e.g. out of memory) come back as a Status.
Status run_attention(const AttentionParams& p, const Parallel& par, const HostAllocator& mem, CallStats* stats);

}  // namespace iceformer
