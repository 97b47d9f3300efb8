#include "decode_index.h"

#include <algorithm>

#include "rng.h"
#include "simd.h"

namespace iceformer {
namespace {

constexpr int64_t kCheckRecent = 256;  // most recent coded rows verified each call (where beams and rewinds differ)
constexpr int64_t kCheckSampled = 32;  // seeded rows of the rest verified each call

}  // namespace

void DecodeIndex::layout(const AttentionParams& p, int64_t rank) {
  const AttentionShape& sh = p.shape;
  const int64_t capacity = p.kv_stride();
  if (sh.B == B_ && sh.Hkv == hkv_ && sh.D == D_ && rank == rank_ && capacity <= capacity_) return;
  if (sh.B == B_ && sh.Hkv == hkv_ && sh.D == D_ && rank == rank_) {
    // A buffer that grew (past and present apart, one row more each step): keep the codes, double the room.
    const int64_t grown = std::max(capacity, 2 * capacity_);
    LowRankSet bigger = set_;
    bigger.per_head = ((grown + kPanel - 1) / kPanel) * set_.r4 * 64;
    bigger.panels.assign(static_cast<size_t>(B_ * hkv_ * bigger.per_head), uint8_t{128});
    std::vector<uint64_t> hashes(static_cast<size_t>(B_ * hkv_ * grown), 0);
    for (int64_t bh = 0; bh < B_ * hkv_; ++bh) {
      std::copy_n(set_.panels.data() + bh * set_.per_head, set_.per_head, bigger.panels.data() + bh * bigger.per_head);
      std::copy_n(hashes_.data() + bh * capacity_, capacity_, hashes.data() + bh * grown);
    }
    set_ = std::move(bigger);
    hashes_ = std::move(hashes);
    capacity_ = grown;
    return;
  }
  B_ = sh.B, hkv_ = sh.Hkv, D_ = sh.D, rank_ = rank, capacity_ = capacity;
  init_lowrank(p, rank, &set_, capacity);
  coded_.assign(static_cast<size_t>(B_ * hkv_), -1);
  hashes_.assign(static_cast<size_t>(B_ * hkv_ * capacity_), 0);
}

void DecodeIndex::hash_rows(const AttentionParams& p, int64_t b, int64_t hkv, int64_t j0, int64_t j1) {
  const float* K = p.key_rows(b, hkv);
  uint64_t* h = hashes_.data() + (b * hkv_ + hkv) * capacity_;
  const Kernels& kern = kernels();
  for (int64_t j = j0; j < j1; ++j) h[j] = kern.row_hash(K + j * D_, D_);
}

void DecodeIndex::build(const AttentionParams& p, int64_t b, int64_t hkv, int64_t len) {
  const int64_t bh = b * hkv_ + hkv;
  build_lowrank(p, b, hkv, &set_);
  hash_rows(p, b, hkv, 0, len);
  coded_[bh] = len;
}

void DecodeIndex::adopt(const AttentionParams& p, const LowRankSet& prefill, int64_t b, int64_t hkv, int64_t len) {
  const int64_t bh = b * hkv_ + hkv, r = set_.r;
  std::copy_n(prefill.panels.data() + bh * prefill.per_head, std::min(prefill.per_head, set_.per_head),
              set_.panels.data() + bh * set_.per_head);
  std::copy_n(prefill.kbasis.data() + bh * r * D_, r * D_, set_.kbasis.data() + bh * r * D_);
  std::copy_n(prefill.qbasis.data() + bh * r * D_, r * D_, set_.qbasis.data() + bh * r * D_);
  std::copy_n(prefill.kscale.data() + bh * r, r, set_.kscale.data() + bh * r);
  hash_rows(p, b, hkv, 0, len);
  coded_[bh] = len;
}

bool DecodeIndex::refresh(const AttentionParams& p, int64_t b, int64_t hkv, int64_t past, int64_t len) {
  const int64_t bh = b * hkv_ + hkv;
  int64_t n = std::min(coded_[bh], past);  // rows from `past` on are this call's (a rewind rewrites them)
  bool ok = n > 0;
  const float* K = p.key_rows(b, hkv);
  const Kernels& kern = kernels();
  auto check = [&](int64_t j) { ok = ok && row_matches(kern, K + j * D_, D_, b, hkv, j); };
  if (ok) {
    for (int64_t j = std::max<int64_t>(0, n - kCheckRecent); j < n; ++j) check(j);
    Rng rng(row_seed(static_cast<int64_t>(n), b, hkv, len));
    check(0);
    for (int64_t t = 0; t < kCheckSampled && ok; ++t)
      check(static_cast<int64_t>(rng.uniform() * static_cast<double>(n)));
  }
  if (!ok) {
    build(p, b, hkv, len);
    return true;
  }
  code_keys(p, b, hkv, n, len, &set_);
  hash_rows(p, b, hkv, n, len);
  coded_[bh] = len;
  return false;
}

int64_t DecodeIndex::bytes() const {
  return static_cast<int64_t>(set_.panels.size() + 4 * (set_.kbasis.size() + set_.qbasis.size() + set_.kscale.size()) +
                              8 * hashes_.size() + 8 * coded_.size());
}

DecodeIndex* DecodeIndexCache::checkout(const void* buffer, bool prompt) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry* same = nullptr;    // the index last returned for this buffer
  Entry* recent = nullptr;  // the most recently returned one
  Entry* oldest = nullptr;
  for (Entry& e : entries_) {
    if (e.lent) continue;
    if (e.buffer == buffer) same = &e;
    if (recent == nullptr || e.last_used > recent->last_used) recent = &e;
    if (oldest == nullptr || e.last_used < oldest->last_used) oldest = &e;
  }
  Entry* pick = same;
  // A continuation in a buffer not seen before (exports that concatenate past and new rows) most likely continues
  // the sequence last decoded; a new prompt gets a fresh index while there is room, so that another generator's
  // index stays intact, else the least recently used.
  if (pick == nullptr && !prompt) pick = recent;
  if (pick == nullptr && static_cast<int>(entries_.size()) < kMaxIndexes) {
    entries_.push_back(Entry{std::make_unique<DecodeIndex>(), buffer, 0, false});
    pick = &entries_.back();
  }
  if (pick == nullptr) pick = oldest;
  if (pick == nullptr) return nullptr;
  pick->lent = true;
  return pick->index.get();
}

void DecodeIndexCache::checkin(DecodeIndex* index, const void* buffer) {
  std::lock_guard<std::mutex> lock(mu_);
  for (Entry& e : entries_)
    if (e.index.get() == index) e.lent = false, e.buffer = buffer, e.last_used = ++clock_;
}

}  // namespace iceformer
