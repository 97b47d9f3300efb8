// A small error type for the ORT-free kernels: ok, or a message saying what, where, expected vs actual.
#pragma once
#include <string>
#include <utility>

namespace iceformer {

class Status {
 public:
  Status() = default;
  static Status Error(std::string message) { return Status(std::move(message)); }
  bool ok() const { return !failed_; }
  const std::string& message() const { return message_; }

 private:
  explicit Status(std::string m) : failed_(true), message_(std::move(m)) {}
  bool failed_ = false;
  std::string message_;
};

}  // namespace iceformer
