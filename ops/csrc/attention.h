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
  int64_t index_bytes = 0;     // k-NN decode: bytes of the persistent index the call used (decode_index.h)
  int64_t index_rebuilds = 0;  // k-NN decode: (batch, KV head) indexes rebuilt from the cache by this call
  int64_t stream_heads = 0;    // k-NN prompt: query heads the probe made stream (auto_windows.h)
};

// Calls with fewer query rows are decode-like: an index built for the call cannot pay; they run flash decoding, or
// k-NN decode over a persistent index (decode_knn.h).
constexpr int64_t kMinQueriesForIndex = 32;

// ICEFORMER_FORCE_EXACT is set: every call runs exact attention.
bool exact_forced();

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

struct LowRankSet;

// Computes p.y. Never throws; errors (e.g. out of memory) come back as a Status. keep_codes: receives the low-rank
// codes of the keys when the low-rank k-NN path ran (the decode index adopts them).
Status run_attention(const AttentionParams& p, const Parallel& par, const HostAllocator& mem, CallStats* stats,
                     LowRankSet* keep_codes = nullptr);

class DecodeIndexCache;

// One KnnAttention call: run_attention, or with the kernel instance's indexes (nullptr: none) and a cache view of the
// keys (decode_knn.h: no attn_mask, each batch row's real keys a prefix) attend_with_index; then its statistics line
// (ICEFORMER_STATS). run_gqa is GroupQueryAttention's counterpart; the registration calls only these two, so both
// ops log at one level.
Status run_knn_attention(const AttentionParams& p, const Parallel& par, const HostAllocator& mem,
                         DecodeIndexCache* indexes);

}  // namespace iceformer
