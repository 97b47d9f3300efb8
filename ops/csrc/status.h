// A small error type for the ORT-free kernels: ok, or a message saying what, where, expected vs actual.
// Out of memory is its own kind: the registration maps it to a different ORT error code than bad input.
#pragma once
#include <cstddef>
#include <string>
#include <utility>

namespace iceformer {

class Status {
 public:
  enum class Kind { kOk, kInvalid, kOutOfMemory };
  Status() = default;
  static Status Error(std::string message) { return Status(Kind::kInvalid, std::move(message)); }
  static Status OutOfMemory(std::string message) { return Status(Kind::kOutOfMemory, std::move(message)); }
  bool ok() const { return kind_ == Kind::kOk; }
  Kind kind() const { return kind_; }
  const std::string& message() const { return message_; }
  // The same status with its message wrapped: prefix + message + suffix.
  Status wrapped(const std::string& prefix, const std::string& suffix) const {
    return ok() ? *this : Status(kind_, prefix + message_ + suffix);
  }

 private:
  Status(Kind k, std::string m) : kind_(k), message_(std::move(m)) {}
  Kind kind_ = Kind::kOk;
  std::string message_;
};

// "<op>: out of memory for <what> (<bytes> bytes requested; <context>)".
inline Status out_of_memory(const std::string& op, const std::string& what, size_t bytes, const std::string& context) {
  return Status::OutOfMemory(op + ": out of memory for " + what + " (" + std::to_string(bytes) + " bytes requested" +
                             (context.empty() ? "" : "; " + context) + ")");
}

}  // namespace iceformer
