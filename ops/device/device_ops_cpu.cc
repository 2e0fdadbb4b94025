// The CPU fallback of the device's standard ops (device_ops.h), for the arguments the Metal
// path declines (a tensor outside the registered buffers, more than 2^32 - 1 elements):
// the glue waits for the stream and runs these on the same unified memory. They run the
// kernels of device_kernels.metal themselves, compiled here as C++ (the same subset of
// the Metal Shading Language as the emulation's shaders), thread position by thread
// position, so the fallback and the GPU path compute with one source. MatMul uses the
// BLAS.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/common/blas.h"
#include "ops/device/device_ops.h"

namespace tfmps {
namespace device_ops {
namespace cpu_kernels {
// What device_kernels.metal needs of <metal_stdlib>, as C++.
#define kernel
#define device
#define constant const
typedef unsigned int uint;
typedef unsigned char uchar;
typedef _Float16 half;  // clang's binary16 (the device kernels library is built by clang)
namespace metal {
using std::exp;
using std::fabs;
using std::log;
using std::pow;
using std::sqrt;
using std::tanh;
}  // namespace metal
#define TFMPS_METAL_AS_CPP 1
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wattributes"
#pragma clang diagnostic ignored "-Wunknown-attributes"
#include "ops/device/device_kernels.metal"  // NOLINT(build/include)
#pragma GCC diagnostic pop
#undef TFMPS_METAL_AS_CPP
#undef kernel
#undef device
#undef constant
}  // namespace cpu_kernels

namespace cpu {
using cpu_kernels::half;

// The fallback's loops index with 32-bit thread positions like the kernels; larger
// tensors are not supported by either path (TensorFlow's CPU device is the way).
template <typename F>
void ForEach(int64_t n, F f) {
  for (int64_t i = 0; i < n; ++i) f(static_cast<uint32_t>(i));
}

void MatMul(Elem t, const void* a, const void* b, void* c, int64_t m, int64_t n, int64_t k, bool ta, bool tb) {
  if (m == 0 || n == 0) return;
  if (t == Elem::kF32) {
    blas::Sgemm(ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f,
                static_cast<const float*>(a), static_cast<int>(ta ? m : k), static_cast<const float*>(b),
                static_cast<int>(tb ? k : n), 0.0f, static_cast<float*>(c), static_cast<int>(n));
    return;
  }
  // half: in float, rounded once per result element.
  auto widen = [](const void* p, int64_t count) {
    std::vector<float> out(count);
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(static_cast<const half*>(p)[i]);
    return out;
  };
  const std::vector<float> fa = widen(a, m * k), fb = widen(b, k * n);
  std::vector<float> fc(m * n);
  blas::Sgemm(ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f, fa.data(),
              static_cast<int>(ta ? m : k), fb.data(), static_cast<int>(tb ? k : n), 0.0f, fc.data(), static_cast<int>(n));
  for (int64_t i = 0; i < m * n; ++i) static_cast<half*>(c)[i] = static_cast<half>(fc[i]);
}

// Runs the f32 or f16 instance of a kernel body over `n` thread positions.
#define TFMPS_BOTH(T_, N, BODY, ...)                                                                      \
  if ((T_) == Elem::kF16) {                                                                             \
    using T = half;                                                                                      \
    ForEach(N, [&](uint32_t i) { cpu_kernels::BODY<T>(__VA_ARGS__, i); });                               \
  } else {                                                                                               \
    using T = float;                                                                                     \
    ForEach(N, [&](uint32_t i) { cpu_kernels::BODY<T>(__VA_ARGS__, i); });                               \
  }

void Unary(int op, Elem t, const void* x, void* y, int64_t n) {
  TfmpsEltwiseArgs a{};
  a.n = static_cast<uint32_t>(n);
  a.op = static_cast<uint32_t>(op);
  TFMPS_BOTH(t, n, tfmps_unary_t, static_cast<const T*>(x), static_cast<T*>(y), a)
}

void Binary(int op, Elem t, const void* x, const void* y, void* z, const Broadcast& b) {
  TfmpsEltwiseArgs a{};
  a.n = static_cast<uint32_t>(b.out_size);
  a.op = static_cast<uint32_t>(op);
  a.rank = static_cast<uint32_t>(b.rank);
  for (int d = 0; d < b.rank; ++d) {
    a.dims[d] = static_cast<uint32_t>(b.dims[d]);
    a.xs[d] = static_cast<uint32_t>(b.x_strides[d]);
    a.ys[d] = static_cast<uint32_t>(b.y_strides[d]);
  }
  TFMPS_BOTH(t, b.out_size, tfmps_binary_t, static_cast<const T*>(x), static_cast<const T*>(y), static_cast<T*>(z), a)
}

void Fill(Elem t, void* y, float value, int64_t n) {
  TfmpsEltwiseArgs a{};
  a.n = static_cast<uint32_t>(n);
  a.value = value;
  TFMPS_BOTH(t, n, tfmps_fill_t, static_cast<T*>(y), a)
}

void ReduceSum(Elem t, const void* x, void* y, int64_t outer, int64_t reduce, int64_t inner, float divisor) {
  TfmpsReduceArgs a{};
  a.outer = static_cast<uint32_t>(outer);
  a.reduce = static_cast<uint32_t>(reduce);
  a.inner = static_cast<uint32_t>(inner);
  a.divisor = divisor;
  TFMPS_BOTH(t, outer * inner, tfmps_reduce_sum_t, static_cast<const T*>(x), static_cast<T*>(y), a)
}

void Softmax(Elem t, const void* x, void* y, int64_t rows, int64_t cols, bool log) {
  if (cols == 0) return;
  TfmpsRowsArgs a{};
  a.rows = static_cast<uint32_t>(rows);
  a.cols = static_cast<uint32_t>(cols);
  a.log = log ? 1 : 0;
  TFMPS_BOTH(t, rows, tfmps_softmax_t, static_cast<const T*>(x), static_cast<T*>(y), a)
}
#undef TFMPS_BOTH

void SparseSoftmaxXent(const float* logits, const void* labels, int label_bytes, float* loss, float* backprop,
                       int64_t rows, int64_t cols) {
  TfmpsRowsArgs a{};
  a.rows = static_cast<uint32_t>(rows);
  a.cols = static_cast<uint32_t>(cols);
  ForEach(rows, [&](uint32_t r) {
    if (label_bytes == 8) {
      cpu_kernels::tfmps_sparse_xent_i64_f32(logits, static_cast<const long*>(labels), loss, backprop, a, r);
    } else {
      cpu_kernels::tfmps_sparse_xent_i32_f32(logits, static_cast<const int*>(labels), loss, backprop, a, r);
    }
  });
}

void Cast(const char* kernel, const void* x, void* y, int64_t n) {
  TfmpsEltwiseArgs a{};
  a.n = static_cast<uint32_t>(n);
  const std::string k = kernel;
#define TFMPS_CAST_CASE(NAME, S, D)                                                            \
  if (k == #NAME) {                                                                            \
    ForEach(n, [&](uint32_t i) { cpu_kernels::NAME(static_cast<const S*>(x), static_cast<D*>(y), a, i); }); \
    return;                                                                                    \
  }
  TFMPS_CAST_CASE(tfmps_cast_i64_f32, long, float)
  TFMPS_CAST_CASE(tfmps_cast_i32_f32, int, float)
  TFMPS_CAST_CASE(tfmps_cast_bool_f32, unsigned char, float)
  TFMPS_CAST_CASE(tfmps_cast_f32_i64, float, long)
  TFMPS_CAST_CASE(tfmps_cast_f32_i32, float, int)
  TFMPS_CAST_CASE(tfmps_cast_f32_bool, float, unsigned char)
  TFMPS_CAST_CASE(tfmps_cast_i64_i32, long, int)
  TFMPS_CAST_CASE(tfmps_cast_i32_i64, int, long)
  TFMPS_CAST_CASE(tfmps_cast_f16_f32, half, float)
  TFMPS_CAST_CASE(tfmps_cast_f32_f16, float, half)
#undef TFMPS_CAST_CASE
}

void Gather(const float* params, const int32_t* indices, int64_t count, int64_t row, float* out) {
  TfmpsIndexedArgs a{};
  a.count = static_cast<uint32_t>(count);
  a.row = static_cast<uint32_t>(row);
  ForEach(count * row, [&](uint32_t i) { cpu_kernels::tfmps_gather_f32(params, indices, out, a, i); });
}

void Scatter(int op, float* var, const int32_t* indices, int64_t count, int64_t row, const float* updates,
             bool scalar_update) {
  TfmpsIndexedArgs a{};
  a.count = static_cast<uint32_t>(count);
  a.row = static_cast<uint32_t>(row);
  a.op = static_cast<uint32_t>(op);
  a.scalar = scalar_update ? 1 : 0;
  ForEach(row, [&](uint32_t j) { cpu_kernels::tfmps_scatter_f32(var, indices, updates, a, j); });
}

}  // namespace cpu
}  // namespace device_ops
}  // namespace tfmps
