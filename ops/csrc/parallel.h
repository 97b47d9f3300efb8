// The task loop every path runs on the host's thread pool.
#pragma once
#include <atomic>
#include <cstddef>
#include <exception>
#include <new>
#include <string>

#include "params.h"
#include "status.h"

namespace iceformer {

// Runs body(i) for i in [0, n) on the host pool; each pool slot drains a shared counter. A task that throws
// (scratch growth that finds no memory) must not unwind into the host's pool threads: the first failure is
// kept, the remaining tasks are skipped, and it comes back as a status naming `what`.
template <typename Body>
[[nodiscard]] Status parallel_dynamic(const Parallel& par, size_t n, const char* what, Body&& body) {
  if (n == 0) return Status();
  struct Ctx {
    Body* body;
    std::atomic<size_t> next{0};
    size_t n;
    std::atomic<int> failed{0};  // 0 none, 1 out of memory, 2 other; the first failing task writes `error`
    std::string error;
  } ctx{&body, {}, n, {}, {}};
  auto worker = [](void* data, size_t) {
    Ctx* c = static_cast<Ctx*>(data);
    for (size_t i = c->next.fetch_add(1); i < c->n; i = c->next.fetch_add(1)) {
      int kind = 0;
      std::string msg;
      try {
        (*c->body)(i);
        continue;
      } catch (const std::bad_alloc&) {
        kind = 1;
      } catch (const std::exception& e) {
        kind = 2, msg = e.what();
      } catch (...) {
        kind = 2, msg = "unknown exception";
      }
      int none = 0;
      if (c->failed.compare_exchange_strong(none, kind)) c->error = std::move(msg);
      c->next.store(c->n);  // no new tasks start
      return;
    }
  };
  if (par.run == nullptr || n == 1)
    worker(&ctx, 0);
  else
    par.run(par.host, worker, n, &ctx);
  const int kind = ctx.failed.load();
  if (kind == 1) return Status::OutOfMemory(std::string("out of memory growing the per-thread scratch of ") + what);
  if (kind == 2) return Status::Error(std::string("task of ") + what + " failed: " + ctx.error);
  return Status();
}

}  // namespace iceformer
