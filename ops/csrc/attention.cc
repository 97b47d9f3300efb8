// Driver: path choice and the task grid. Phase 1 packs each (batch, KV head)'s keys once; phase 2 runs
// (batch, query head, query block) tasks, pulled from an atomic counter so uneven (causal) blocks balance;
// every task writes only its own output rows, so the result is the same at any thread count.
#include "attention.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <new>
#include <vector>

#include "exact_attention.h"

namespace iceformer {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Runs body(i) for i in [0, n) on the host pool; each pool slot drains a shared counter.
template <typename Body>
void parallel_dynamic(const Parallel& par, size_t n, Body&& body) {
  if (n == 0) return;
  struct Ctx {
    Body* body;
    std::atomic<size_t> next{0};
    size_t n;
  } ctx{&body, {}, n};
  auto worker = [](void* data, size_t) {
    Ctx* c = static_cast<Ctx*>(data);
    for (size_t i = c->next.fetch_add(1); i < c->n; i = c->next.fetch_add(1)) (*c->body)(i);
  };
  if (par.run == nullptr || n == 1) {
    worker(&ctx, 0);
    return;
  }
  par.run(par.host, worker, n, &ctx);
}

}  // namespace

const char* path_name(PathTaken p) {
  switch (p) {
    case PathTaken::kExact: return "exact";
    case PathTaken::kKnn: return "knn";
    case PathTaken::kEmpty: return "empty";
  }
  return "?";
}

Status run_exact(const AttentionParams& p, const Parallel& par, CallStats* stats) {
  const AttentionShape& sh = p.shape;
  const auto t0 = Clock::now();
  std::vector<float> packed;
  const int64_t per_head = packed_keys_size(sh);
  try {
    packed.resize(static_cast<size_t>(sh.B * sh.Hkv * per_head));
  } catch (const std::bad_alloc&) {
    return Status::Error("KnnAttention: out of memory packing keys (" + std::to_string(sh.B * sh.Hkv * per_head * 4) +
                         " bytes)");
  }
  parallel_dynamic(par, static_cast<size_t>(sh.B * sh.Hkv), [&](size_t t) {
    const int64_t b = static_cast<int64_t>(t) / sh.Hkv, h = static_cast<int64_t>(t) % sh.Hkv;
    pack_keys(p, b, h, packed.data() + t * per_head);
  });
  stats->build_ms = ms_since(t0);

  const auto t1 = Clock::now();
  const int64_t nblocks = (sh.S + kExactBlockQ - 1) / kExactBlockQ;
  const int64_t group = sh.group();
  // Heaviest first: under the causal flag the last query blocks see the most keys.
  parallel_dynamic(par, static_cast<size_t>(sh.B * sh.Hq * nblocks), [&](size_t t) {
    const int64_t qb = p.is_causal ? nblocks - 1 - static_cast<int64_t>(t) / (sh.B * sh.Hq)
                                   : static_cast<int64_t>(t) / (sh.B * sh.Hq);
    const int64_t bh = static_cast<int64_t>(t) % (sh.B * sh.Hq);
    const int64_t b = bh / sh.Hq, hq = bh % sh.Hq;
    const int64_t i0 = qb * kExactBlockQ, i1 = std::min(sh.S, i0 + kExactBlockQ);
    exact_rows(p, packed.data() + (b * sh.Hkv + hq / group) * per_head, b, hq, i0, i1);
  });
  stats->softmax_ms = ms_since(t1);
  stats->path = PathTaken::kExact;
  return Status();
}

Status run_attention(const AttentionParams& p, const Parallel& par, CallStats* stats) {
  const auto t0 = Clock::now();
  const AttentionShape& sh = p.shape;
  *stats = CallStats{};
  if (sh.B == 0 || sh.Hq == 0 || sh.S == 0 || sh.Dv == 0) {
    stats->path = PathTaken::kEmpty;
    stats->reason = "empty output";
    return Status();
  }
  if (sh.T == 0) {  // no key visible anywhere: zeros by contract
    std::fill(p.y, p.y + sh.B * sh.Hq * sh.S * sh.Dv, 0.f);
    stats->path = PathTaken::kEmpty;
    stats->reason = "no keys (T = 0)";
    return Status();
  }
  Status st = run_exact(p, par, stats);
  if (stats->reason.empty()) stats->reason = p.knn.top_k == 0 ? "top_k = 0" : "exact";
  stats->total_ms = ms_since(t0);
  return st;
}

}  // namespace iceformer
