// Metal backend of the fully connected layer (MPSCNNFullyConnected and its gradient),
// behind the backend seam (dense.h). macOS; on Linux it runs against the Metal emulation.
//
// This is the MPSCNN path meant for the training-graph API (images in, images out); the
// per-op device kernels (dense_ops.cc) do NOT call it: they run MPSMatrixMultiplication
// on the tensors' buffers (dense.h). Here x [N, K] becomes N images of 1 x 1 x K
// (MPSMatrixCopyToImage), MPSCNNFullyConnected writes N images of 1 x 1 x M, and
// MPSImageCopyToMatrix writes y [N, M].
//
// Every entry point returns
//   kOk           the results are (or, in a device stream, will be once the stream's
//                 work has run) in the output buffers;
//   kUnsupported  MPS cannot compute these arguments exactly, or the path is not written
//                 (the message says which): the caller runs the CPU backend on the same
//                 memory; nothing was written;
//   kInternal     an MPS initializer returned nil or the command buffer failed.
// x and y must lie in registered Metal buffers at 16-byte aligned offsets (else
// kUnsupported); the kernel and bias are read on the CPU (MPS takes them from an
// MPSCNNConvolutionDataSource at initialization), so with a device stream the call first
// waits for the stream's queued work.
//
// What runs on Metal (float32 data with float32 accumulation): DenseForwardFcMetal
// (identity or relu, with or without bias); DenseBackpropInputFcMetal and
// DenseBackpropKernelFcMetal (identity only).
#ifndef TFMPS_DENSE_DENSE_METAL_H_
#define TFMPS_DENSE_DENSE_METAL_H_

#include <cstdint>

#include "ops/common/backend.h"
#include "ops/dense/dense.h"

namespace tfmps {
namespace dense {

// The dense kernel W [K][M] (dense.h) as MPSCNNFullyConnected's weights for a 1 x 1 x K
// source: Apple's Weights[No][source.width][source.height][Ni] = [M][1][1][K], i.e. W's
// transpose: fc[m * K + k] = w[k * M + m]. dst and src must not overlap.
inline void KernelToFcWeights(int64_t in, int64_t out, const float* w, float* fc) {
  for (int64_t k = 0; k < in; ++k)
    for (int64_t m = 0; m < out; ++m) fc[m * in + k] = w[k * out + m];
}

// The inverse: Apple's [M][1][1][K] (the gradient state's gradientForWeights) -> [K][M].
inline void FcWeightsToKernel(int64_t in, int64_t out, const float* fc, float* w) {
  for (int64_t k = 0; k < in; ++k)
    for (int64_t m = 0; m < out; ++m) w[k * out + m] = fc[m * in + k];
}

BackendStatus DenseForwardFcMetal(const DenseDims& d, const DenseConfig& c, const DenseForwardArgs& a);
// dx = dy W^T on MPSCNNFullyConnectedGradient (GradientWithData). Identity only: relu's
// mask (dense.h) is not MPS's (the gradient kernels take no fused neuron): kUnsupported.
BackendStatus DenseBackpropInputFcMetal(const DenseDims& d, const DenseConfig& c, const DenseBackpropInputArgs& a);
// dW = x^T dy and db = sum dy (a.dbias NULL: none) on MPSCNNFullyConnectedGradient
// (GradientWithWeightsAndBias), through the gradient state's buffers, which the host
// reads: the call waits for its command buffer. Identity only, as above.
BackendStatus DenseBackpropKernelFcMetal(const DenseDims& d, const DenseConfig& c, const DenseBackpropKernelArgs& a);

}  // namespace dense
}  // namespace tfmps

#endif  // TFMPS_DENSE_DENSE_METAL_H_
