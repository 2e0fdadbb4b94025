// The fully connected (dense) layer: the backend interface of the dense family.
//
// Layouts (row-major, innermost last); x's leading dimensions are flattened into rows:
//   input  x      [N, K]      N = product of x's leading dims (any rank >= 2), K features
//   kernel W      [K, M]      Keras's Dense kernel layout (not transposed)
//   bias   b      [M]         optional, fused
//   output y      [N, M]
// Forward:
//   z[n, m] = sum_{k < K} x[n, k] * W[k, m],   y = act(z + b),   act = identity or relu
//   relu(v) = v if v > 0 or v is NaN, else +0 (the device's Relu kernel's rule)
// Gradients, with g = dy masked by the activation: g[n, m] = dy[n, m] if y[n, m] > 0
// else 0 for relu (TF's ReluGrad), g = dy for identity:
//   dx[n, k] = sum_{m < M} g[n, m] * W[k, m]      dx = g W^T   [N, K]
//   dW[k, m] = sum_{n < N} x[n, k] * g[n, m]      dW = x^T g   [K, M]
//   db[m]    = sum_{n < N} g[n, m]                              [M]
//
// Data types: every tensor of one call is float32 or every one is float16 (IEEE half,
// as TF's DT_HALF bits). Accumulator precision:
//   float32 (default): float32 data: BLAS sgemm (ops/common/blas.h), single-threaded, on
//     row/column blocks spread over TF's pool; float16 data: the operands converted to
//     float32 (exact), sgemm, and the result rounded once to half (bias added in float32
//     first). db sums in float32 in increasing n and is rounded once.
//   float16: the precision MPS offers as MPSNNConvolutionAccumulatorPrecisionOptionHalf
//     (macOS 10.13.4+), emulated EXACTLY with this model, shared with the convolution ops:
//       for each output, acc starts at +0 (half); for k = 0..K-1 in increasing order,
//       acc = round_to_half(acc + x_k * w_k), where the product of two halves is exact in
//       float32 and the sum is formed exactly (in double) and rounded once to half (round
//       to nearest even, overflow to inf); then the bias is added in float32 and the
//       result rounded to the output dtype, then the activation.
//     (acc has 11 significant bits and its last at 2^-24 or above, x_k * w_k 22 and its
//     last at 2^-48 or above. Where the exact sum would need more than double's 53 bits,
//     either the product is below 2^-31 |acc| (the half result is acc either way) or
//     above 2^28 (inf either way): the double sum rounds to the same half as the exact.)
//     For float32 data the inputs (x, W; dy and x in the gradients) are first rounded to
//     half; the bias stays float32. The gradients follow the same model with their own
//     sums: dx over m, dW over n, db over n with w_k = 1, each in increasing order;
//     there is no bias term in the gradients. This path does not use BLAS: a loop over
//     the outputs of one row (vectorizable, the k order kept), blocked over rows and
//     output columns on TF's pool; several times slower than sgemm, and meant as the
//     tool to study what half accumulation does to a model before running it on a Mac
//     (Apple does not document MPS's summation order; this model is one definite order).
//
// The Metal backend (the tf-mps device, dense_ops.cc): float32 data with float32
// accumulation runs on the device's MPSMatrixMultiplication (device_ops.h) followed by
// the device's bias-add/relu/ReluGrad/sum kernels; every other combination returns
// kUnsupported and runs this CPU backend after the stream's queued work.
#ifndef TFMPS_DENSE_DENSE_H_
#define TFMPS_DENSE_DENSE_H_

#include <cstdint>

#include "ops/common/backend.h"

namespace tfmps {
namespace dense {

enum class DType { kFloat32, kFloat16 };
enum class Accumulator { kFloat32, kFloat16 };
enum class Activation { kNone, kRelu };

// N, K, M as above; each fits in int (the glue checks), any may be 0.
struct DenseDims {
  int64_t rows = 0, in = 0, out = 0;
};

struct DenseConfig {
  DType dtype = DType::kFloat32;
  Accumulator accumulator = Accumulator::kFloat32;
  Activation activation = Activation::kNone;
};

// Pointers to float (kFloat32) or uint16_t half bits (kFloat16).
struct DenseForwardArgs {
  const void* x;       // [N, K]
  const void* kernel;  // [K, M]
  const void* bias;    // [M] or nullptr
  void* y;             // [N, M]
};

struct DenseBackpropInputArgs {
  const void* dy;      // [N, M]
  const void* kernel;  // [K, M]
  const void* y;       // [N, M], the forward output (relu's mask); nullptr for identity
  void* dx;            // [N, K]
};

struct DenseBackpropKernelArgs {
  const void* x;   // [N, K]
  const void* dy;  // [N, M]
  const void* y;   // [N, M] (relu's mask) or nullptr for identity
  void* dkernel;   // [K, M]
  void* dbias;     // [M] or nullptr
};

// The CPU backend runs on `parallel` (TF's intra-op pool) and needs a scratch buffer of
// the size its *Workspace function returns (floats), allocated by the glue.
struct CpuContext {
  ParallelFor parallel;
  int threads = 1;
  float* workspace = nullptr;
  int64_t workspace_size = 0;  // floats
};

int64_t DenseForwardCpuWorkspace(const DenseDims& d, const DenseConfig& c);
int64_t DenseBackpropInputCpuWorkspace(const DenseDims& d, const DenseConfig& c);
int64_t DenseBackpropKernelCpuWorkspace(const DenseDims& d, const DenseConfig& c, bool bias);

void DenseForwardCpu(const DenseDims& d, const DenseConfig& c, const DenseForwardArgs& a, const CpuContext& cpu);
void DenseBackpropInputCpu(const DenseDims& d, const DenseConfig& c, const DenseBackpropInputArgs& a,
                           const CpuContext& cpu);
void DenseBackpropKernelCpu(const DenseDims& d, const DenseConfig& c, const DenseBackpropKernelArgs& a,
                            const CpuContext& cpu);

// round_to_half of the model above, as a double holding the half value (exposed for the
// tests of the op library, through nothing else).
double RoundToHalf(double s);

}  // namespace dense
}  // namespace tfmps

#endif  // TFMPS_DENSE_DENSE_H_
