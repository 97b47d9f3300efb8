// The task loop every path runs on the host's thread pool.
#pragma once
#include <atomic>
#include <cstddef>

#include "params.h"

namespace iceformer {

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

}  // namespace iceformer
