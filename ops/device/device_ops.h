// The tf-mps device's Metal implementations of standard TensorFlow ops (device_ops_metal.mm),
// as plain C++ for the device kernels' glue (device_kernels.cc). Float32 and half (Elem), row-major.
//
// Each call encodes into the calling thread's stream (a device::ScopedStream must be
// alive) and returns without waiting. kUnsupported (a pointer outside the registered
// buffers, more than 2^32 - 1 elements, more dims than TFMPS_MAX_DIMS): the glue waits for
// the stream and computes on the CPU, on the same unified memory.
#ifndef TFMPS_DEVICE_DEVICE_OPS_H_
#define TFMPS_DEVICE_DEVICE_OPS_H_

#include <cstddef>
#include <cstdint>

#include "ops/common/backend.h"
#include "ops/device/device_kernels.h"

namespace tfmps {
namespace device_ops {

// Element types of the float kernels: float32, and IEEE half (TensorFlow's DT_HALF bits).
enum class Elem { kF32, kF16 };
inline size_t ElemBytes(Elem e) { return e == Elem::kF16 ? 2 : 4; }

// c[m, n] = op(a) op(b), op(a) [m, k], op(b) [k, n]: MPSMatrixMultiplication.
BackendStatus MatMul(Elem t, const void* a, const void* b, void* c, int64_t m, int64_t n, int64_t k,
                     bool transpose_a, bool transpose_b);

// y[i] = f(x[i]) for one of the TFMPS_UNARY_* ops.
BackendStatus Unary(int op, Elem t, const void* x, void* y, int64_t n);

// z = f(x, y) for one of the TFMPS_BINARY_* ops over an output of `rank` dims, each
// input read with its own element strides (0 along a broadcast dim).
struct Broadcast {
  int rank = 0;
  int64_t dims[TFMPS_MAX_DIMS] = {};
  int64_t x_strides[TFMPS_MAX_DIMS] = {};
  int64_t y_strides[TFMPS_MAX_DIMS] = {};
  int64_t x_size = 0, y_size = 0, out_size = 0;
};
BackendStatus Binary(int op, Elem t, const void* x, const void* y, void* z, const Broadcast& b);

BackendStatus Fill(Elem t, void* y, float value, int64_t n);

// y[o, i] = sum_r x[o, r, i] / divisor (TensorFlow divides for a mean; 1 for a sum).
BackendStatus ReduceSum(Elem t, const void* x, void* y, int64_t outer, int64_t reduce, int64_t inner, float divisor);

BackendStatus Softmax(Elem t, const void* x, void* y, int64_t rows, int64_t cols, bool log);

// labels: int32 (label_bytes 4) or int64 (8).
BackendStatus SparseSoftmaxXent(const float* logits, const void* labels, int label_bytes, float* loss,
                                float* backprop, int64_t rows, int64_t cols);

// y = cast(x) by `kernel`, one of device_kernels.metal's tfmps_cast_<src>_<dst>; x and y
// hold n elements of the kernel's types.
BackendStatus Cast(const char* kernel, const void* x, size_t x_bytes, void* y, size_t y_bytes, int64_t n);

// out[k, :] = params[indices[k], :] over rows of `row` floats; indices in host memory,
// already checked to be in range (copied into a buffer of their own for the GPU).
BackendStatus Gather(const float* params, int64_t params_rows, const int32_t* indices, int64_t count, int64_t row,
                     float* out);
// var[indices[k], :] op= updates[k, :] (op: TFMPS_SCATTER_*; scalar_update: every update
// is updates[0]); repeated indices apply in order.
BackendStatus Scatter(int op, float* var, int64_t var_rows, const int32_t* indices, int64_t count, int64_t row,
                      const float* updates, bool scalar_update);

// dst[0, bytes) = src[0, bytes), a blit in stream order.
BackendStatus Copy(const void* src, void* dst, size_t bytes);

// The CPU fallback (device_ops_cpu.cc): the same operations, computed on the host; the
// caller has waited for the stream's work first.
namespace cpu {
void MatMul(Elem t, const void* a, const void* b, void* c, int64_t m, int64_t n, int64_t k, bool transpose_a,
            bool transpose_b);
void Unary(int op, Elem t, const void* x, void* y, int64_t n);
void Binary(int op, Elem t, const void* x, const void* y, void* z, const Broadcast& b);
void Fill(Elem t, void* y, float value, int64_t n);
void ReduceSum(Elem t, const void* x, void* y, int64_t outer, int64_t reduce, int64_t inner, float divisor);
void Softmax(Elem t, const void* x, void* y, int64_t rows, int64_t cols, bool log);
void SparseSoftmaxXent(const float* logits, const void* labels, int label_bytes, float* loss, float* backprop,
                       int64_t rows, int64_t cols);
void Cast(const char* kernel, const void* x, void* y, int64_t n);
void Gather(const float* params, const int32_t* indices, int64_t count, int64_t row, float* out);
void Scatter(int op, float* var, const int32_t* indices, int64_t count, int64_t row, const float* updates,
             bool scalar_update);
}  // namespace cpu

}  // namespace device_ops
}  // namespace tfmps

#endif  // TFMPS_DEVICE_DEVICE_OPS_H_
