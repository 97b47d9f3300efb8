// A set of keys built by many unordered, repeated insertions and read back once in ascending order: a byte per
// key, set without a branch (a query block's rows retrieve the same keys many times over, and an "is it new?"
// branch per retrieval mispredicts), collected by one pass over the byte map. Clearing costs the keys collected.
#pragma once
#include <cstdint>
#include <vector>

namespace iceformer {

class KeyMarks {
 public:
  // A new, empty set over keys [0, n).
  void begin(int64_t n) {
    collect(static_cast<int64_t>(bytes_.size()));
    for (int32_t j : set_) bytes_[j] = 0;
    set_.clear();
    if (static_cast<int64_t>(bytes_.size()) < n) bytes_.resize(n, 0);
    collected_ = true;  // nothing outside set_ is marked
  }
  void mark(int64_t j) {
    bytes_[j] = 1;
    collected_ = false;
  }
  // Marks key 16 p + c for each bit c of bits[p], for the keys below n (one pass, no branch per key).
  void mark_bits(const uint16_t* bits, int64_t n) {
    uint8_t* b = bytes_.data();
    for (int64_t j = 0; j < n; ++j) b[j] |= static_cast<uint8_t>((bits[j / 16] >> (j % 16)) & 1u);
    collected_ = false;
  }
  bool contains(int64_t j) const { return bytes_[j] != 0; }
  // The marked keys in [0, n) ascending (n: the begin() bound or less; keys past it must not be marked).
  const std::vector<int32_t>& collect(int64_t n) {
    if (!collected_) {
      set_.clear();
      const uint8_t* b = bytes_.data();
      int64_t j = 0;
      for (; j + 8 <= n; j += 8) {
        uint64_t w;
        __builtin_memcpy(&w, b + j, 8);
        while (w != 0) {
          set_.push_back(static_cast<int32_t>(j + __builtin_ctzll(w) / 8));
          w &= w - 1;
        }
      }
      for (; j < n; ++j)
        if (b[j]) set_.push_back(static_cast<int32_t>(j));
      collected_ = true;
    }
    return set_;
  }

 private:
  std::vector<uint8_t> bytes_;
  std::vector<int32_t> set_;
  bool collected_ = true;
};

}  // namespace iceformer
