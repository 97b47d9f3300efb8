// Epoch-stamped per-key marks and counters: "clearing" for the next query is one increment, not O(T).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace iceformer {

class EpochSet {
 public:
  void begin(int64_t n) {  // a new, empty set over keys [0, n)
    if (static_cast<int64_t>(mark_.size()) < n) mark_.resize(n, 0);
    if (++epoch_ == 0) {  // wrapped: clear once every 2^32 queries
      std::fill(mark_.begin(), mark_.end(), 0u);
      epoch_ = 1;
    }
  }
  bool contains(int64_t j) const { return mark_[j] == epoch_; }
  // Inserts j; returns true when it was not there yet.
  bool insert(int64_t j) {
    if (mark_[j] == epoch_) return false;
    mark_[j] = epoch_;
    return true;
  }

 private:
  std::vector<uint32_t> mark_;
  uint32_t epoch_ = 0;
};

// counts[j] for one query, reset by epoch: value = epoch << 8 | count (count < 256).
class EpochCounter {
 public:
  void begin(int64_t n) {
    if (static_cast<int64_t>(val_.size()) < n) val_.resize(n, 0);
    if (++epoch_ == (1u << 24)) {
      std::fill(val_.begin(), val_.end(), 0u);
      epoch_ = 1;
    }
  }
  // Increments key j's count and returns the new count.
  uint32_t increment(int64_t j) {
    const uint32_t v = val_[j];
    const uint32_t c = (v >> 8) == epoch_ ? (v & 0xFFu) + 1 : 1;
    val_[j] = (epoch_ << 8) | c;
    return c;
  }

 private:
  std::vector<uint32_t> val_;
  uint32_t epoch_ = 0;
};

}  // namespace iceformer
