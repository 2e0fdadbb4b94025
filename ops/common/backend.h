// The seam between the TensorFlow glue and the backends (cpu, metal).
//
// Backends see only the plain types declared here and in each family's header: raw
// pointers with element counts, hyper-parameters, and a ParallelFor to run work on the
// caller's thread pool. They never see TensorFlow types, and they may assume that the
// glue has validated every argument.
#ifndef TFMPS_COMMON_BACKEND_H_
#define TFMPS_COMMON_BACKEND_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

namespace tfmps {

// Result of a backend call. kUnsupported means "this backend cannot run these
// arguments; the caller may fall back to another backend" (an explicit contract, never
// a silent change of results). kInternal is a bug or an OS/driver failure.
struct BackendStatus {
  enum class Code { kOk, kUnsupported, kInternal };
  Code code = Code::kOk;
  std::string message;

  static BackendStatus Ok() { return {}; }
  static BackendStatus Unsupported(std::string m) { return {Code::kUnsupported, std::move(m)}; }
  static BackendStatus Internal(std::string m) { return {Code::kInternal, std::move(m)}; }
  bool ok() const { return code == Code::kOk; }
};

// Runs fn(begin, end) over [0, total) split across the caller's worker threads.
// cost_per_unit is a rough count of cycles per unit, used to choose the split.
using ParallelFor = std::function<void(int64_t total, int64_t cost_per_unit,
                                       const std::function<void(int64_t, int64_t)>& fn)>;

}  // namespace tfmps

#endif  // TFMPS_COMMON_BACKEND_H_
