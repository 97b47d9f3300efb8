// The k-NN decode path's persistent index of a KV cache (issue 31): per (batch, KV head), the rank-r basis and the
// 8-bit low-rank codes of the cached keys (lowrank.h, the prefill path's scan format) and a 64-bit hash of every
// coded key row. ONNX Runtime gives an op no state between runs, so the GroupQueryAttention kernel instance owns a
// DecodeIndexCache: a few indexes, each checked out by one call at a time (two generators on one session, or two
// threads running it, never share one). An index is trusted only as far as its hashes say: every call rewinds it
// to the rows the call says were cached before it, checks the 256 most recent rows and 32 seeded others, and the
// decode path re-checks every key row it gathers; any mismatch rebuilds the (batch, KV head) from the cache. What
// generation does to a buffer (a new prompt, a rewind, beams reordered, a buffer reused or moved) rewrites a suffix
// or everything and is caught. Not caught: one row rewritten mid-cache outside the op that no check samples and the
// retrieval does not pick (its contribution is then estimated from its old code, as a retrieval miss would be).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "lowrank.h"
#include "params.h"
#include "simd.h"

namespace iceformer {

class DecodeIndex {
 public:
  // Sizes the index for p's layout (B, Hkv, D, rank, the KV buffer's rows); a new layout drops every head's codes.
  void layout(const AttentionParams& p, int64_t rank);
  // Rebuilds (b, hkv) from the cache rows [0, len): basis fitted to the keys and p's queries (lowrank.cc), codes,
  // hashes.
  void build(const AttentionParams& p, int64_t b, int64_t hkv, int64_t len);
  // Takes (b, hkv)'s basis and codes from the prefill's k-NN path (what build would compute from the same call) and
  // hashes the rows [0, len).
  void adopt(const AttentionParams& p, const LowRankSet& prefill, int64_t b, int64_t hkv, int64_t len);
  // Makes (b, hkv) cover the cache rows [0, len) of which [0, past) were cached before this call: rewinds to past,
  // verifies a seeded sample and the most recent coded rows against their hashes (rebuilds on a mismatch or when
  // nothing is built), then codes the rows [coded, len) with the head's basis. Returns whether it rebuilt.
  bool refresh(const AttentionParams& p, int64_t b, int64_t hkv, int64_t past, int64_t len);
  // Whether cache row j of (b, hkv) still holds the key row that was coded (its row_hash, simd.h, matches).
  // (kern: the dispatched kernel table, looked up once by the caller's loop.)
  bool row_matches(const Kernels& kern, const float* row, int64_t D, int64_t b, int64_t hkv, int64_t j) const {
    return hashes_[(b * hkv_ + hkv) * capacity_ + j] == kern.row_hash(row, D);
  }
  // Forgets (b, hkv): the next refresh rebuilds it.
  void drop(int64_t b, int64_t hkv) { coded_[b * hkv_ + hkv] = -1; }
  const LowRankSet& codes() const { return set_; }
  // Bytes held: codes, bases, scales and hashes.
  int64_t bytes() const;

 private:
  // hashes of the cache rows [j0, j1) of (b, hkv)
  void hash_rows(const AttentionParams& p, int64_t b, int64_t hkv, int64_t j0, int64_t j1);
  int64_t B_ = -1, hkv_ = -1, D_ = -1, rank_ = -1, capacity_ = -1;
  LowRankSet set_;                // per_head sized for capacity_ keys
  std::vector<int64_t> coded_;    // [B*Hkv]: rows coded and hashed, -1: nothing built
  std::vector<uint64_t> hashes_;  // [B*Hkv][capacity_]
};

// The kernel instance's indexes: at most kMaxIndexes, each lent to one call at a time, preferring the index last
// returned for the same KV buffer (genai's shared past/present buffer keeps its address across steps).
class DecodeIndexCache {
 public:
  static constexpr int kMaxIndexes = 4;
  // An index for the KV buffer `buffer` (prompt: the call starts a sequence), or nullptr when every index is lent
  // out (the call then decodes exactly). Any index may hold another sequence: refresh() decides what is reusable.
  DecodeIndex* checkout(const void* buffer, bool prompt);
  void checkin(DecodeIndex* index, const void* buffer);

 private:
  struct Entry {
    std::unique_ptr<DecodeIndex> index;
    const void* buffer = nullptr;
    uint64_t last_used = 0;
    bool lent = false;
  };
  std::mutex mu_;
  std::vector<Entry> entries_;
  uint64_t clock_ = 0;
};

// An index lent by a kernel instance's cache for one call, returned however the call ends.
class LentIndex {
 public:
  LentIndex(DecodeIndexCache& cache, const void* buffer, bool prompt)
      : cache_(cache), buffer_(buffer), index_(cache.checkout(buffer, prompt)) {}
  ~LentIndex() {
    if (index_ != nullptr) cache_.checkin(index_, buffer_);
  }
  LentIndex(const LentIndex&) = delete;
  LentIndex& operator=(const LentIndex&) = delete;
  DecodeIndex* get() const { return index_; }

 private:
  DecodeIndexCache& cache_;
  const void* buffer_;
  DecodeIndex* index_;
};

}  // namespace iceformer
