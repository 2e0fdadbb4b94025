// Metal backend of pooling (MPSCNNPoolingMax/Average and their gradient kernels),
// behind the backend seam (pool.h). macOS; on Linux it runs against the Metal emulation.
//
// Every entry point returns
//   kOk           the results are (or, in a device stream, will be once the stream's
//                 work has run) in the output buffers;
//   kUnsupported  MPS cannot compute these arguments exactly, or the path is not written
//                 yet (the message says which): the caller runs the CPU backend on the
//                 same memory; nothing was written;
//   kInternal     an MPS initializer returned nil or the command buffer failed.
// All arrays are float32 NHWC in registered Metal buffers at 16-byte aligned offsets
// (else kUnsupported). float16 tensors stay on the CPU path (the glue's float32 copies
// are not in Metal buffers).
#ifndef TFMPS_POOL_POOL_METAL_H_
#define TFMPS_POOL_POOL_METAL_H_

#include "ops/common/backend.h"
#include "ops/pool/pool.h"

namespace tfmps {
namespace pool {

// y [N, OH, OW, C] from x [N, H, W, C] (MPSCNNPoolingMax / MPSCNNPoolingAverage).
BackendStatus MaxPool2DMetal(const Pool2DGeometry& g, const float* x, float* y);
BackendStatus AvgPool2DMetal(const Pool2DGeometry& g, const float* x, float* y);

// dx [N, H, W, C] from dy [N, OH, OW, C] (MPSCNNPoolingAverageGradient).
BackendStatus AvgPool2DGradMetal(const Pool2DGeometry& g, const float* dy, float* dx);

// dx from x (for the arg-max) and dy (MPSCNNPoolingMaxGradient, which re-reads x). Apple
// leaves the pick among tied maxima to the implementation, TF routes to the first: the
// call reads x on the host first (with a device stream, after waiting for its work) and
// declines (kUnsupported) when any window's maximum is tied or x holds a NaN.
BackendStatus MaxPool2DGradMetal(const Pool2DGeometry& g, const float* x, const float* dy, float* dx);

}  // namespace pool
}  // namespace tfmps

#endif  // TFMPS_POOL_POOL_METAL_H_
