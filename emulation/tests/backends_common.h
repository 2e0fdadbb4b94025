// Shared by the _tfmps_metal_emu binding files (backends_module.cc and one
// backends_<family>.cc per op family): NumPy arrays staged into shared-storage
// MTLBuffers, results as (code, message), the GIL released around backend calls.
#ifndef TFMPS_EMULATION_TESTS_BACKENDS_COMMON_H_
#define TFMPS_EMULATION_TESTS_BACKENDS_COMMON_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include "emulation/tests/backends_images.h"
#include "ops/common/backend.h"
#include "ops/common/metal_context.h"

namespace tfmps_test {

namespace py = pybind11;
using tfmps::BackendStatus;

using F32 = py::array_t<float, py::array::c_style>;

inline py::tuple Result(const BackendStatus& s) {
  const int code = s.code == BackendStatus::Code::kOk            ? 0
                   : s.code == BackendStatus::Code::kUnsupported ? 1
                                                                 : 2;
  return py::make_tuple(code, s.message);
}

// A shared-storage MTLBuffer holding a copy of `bytes` bytes at `offset`; freed (and so
// released) when it goes out of scope.
class Staged {
 public:
  Staged(const void* src, size_t bytes, size_t offset) : bytes_(bytes), offset_(offset) {
    base_ = static_cast<char*>(tfmps::metal::AllocateSharedBuffer(offset + bytes + 1));
    if (base_ == nullptr) throw std::runtime_error("AllocateSharedBuffer failed (no Metal device?)");
    if (src != nullptr && bytes != 0) std::memcpy(base_ + offset, src, bytes);
  }
  ~Staged() { tfmps::metal::FreeSharedBuffer(base_); }
  Staged(const Staged&) = delete;
  Staged& operator=(const Staged&) = delete;
  char* data() const { return base_ + offset_; }
  void CopyTo(void* dst) const {
    if (bytes_ != 0) std::memcpy(dst, data(), bytes_);
  }

 private:
  char* base_;
  size_t bytes_, offset_;
};

// The staged copies of one call's arrays; results are written back on Commit().
struct Stage {
  size_t offset;
  std::vector<std::pair<std::unique_ptr<Staged>, F32>> arrays;

  float* Add(F32& a, bool optional = false) {
    if (optional && a.size() == 0) return nullptr;
    auto staged = std::make_unique<Staged>(a.data(), static_cast<size_t>(a.nbytes()), offset);
    float* p = reinterpret_cast<float*>(staged->data());
    arrays.emplace_back(std::move(staged), a);
    return p;
  }
  void Commit() {
    for (auto& [staged, array] : arrays) staged->CopyTo(array.mutable_data());
  }
};

// Runs `body` with the GIL released: the backends block on command buffers whose
// completion handlers run on the queue's worker thread.
template <typename Body>
inline BackendStatus NoGil(Body body) {
  py::gil_scoped_release release;
  return body();
}

// With stream, the call runs as in a device stream (backends_images.h's WithStream): its
// results are read only after the stream's wait.
template <typename Body>
BackendStatus OnStream(bool stream, Body body) {
  return stream ? tfmps_test::WithStream(body) : body();
}

inline std::vector<int64_t> ShapeOf(const F32& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

// One op family's bindings, each in its own file (backends_<family>.cc).
void BindPool(py::module_& m);
void BindNorm(py::module_& m);
void BindDense(py::module_& m);

}  // namespace tfmps_test

#endif  // TFMPS_EMULATION_TESTS_BACKENDS_COMMON_H_
