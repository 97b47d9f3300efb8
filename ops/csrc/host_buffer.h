// Per-call scratch from the host's allocator (ONNX Runtime's CPU arena: memory reused across calls instead of
// fresh, zero-filled pages each call), or from malloc when there is no host (tools, tests).
#pragma once
#include <cstddef>
#include <cstdlib>

#include "params.h"

namespace iceformer {

template <typename T>
class HostBuffer {
 public:
  explicit HostBuffer(const HostAllocator& a) : a_(a) {}
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer() { release(); }

  // Contents are uninitialised. Returns false when the memory is not available.
  bool allocate(size_t n) {
    release();
    if (n == 0) return true;
    void* p = a_.alloc != nullptr ? a_.alloc(a_.host, n * sizeof(T)) : std::malloc(n * sizeof(T));
    if (p == nullptr) return false;
    p_ = static_cast<T*>(p);
    n_ = n;
    return true;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }

 private:
  void release() {
    if (p_ != nullptr) {
      if (a_.alloc != nullptr)
        a_.free(a_.host, p_);
      else
        std::free(p_);
    }
    p_ = nullptr;
    n_ = 0;
  }
  HostAllocator a_;
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace iceformer
