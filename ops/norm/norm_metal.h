// Metal backend of batch and instance normalization (MPSCNNBatchNormalization, MPSCNNInstanceNormalization and their gradient kernels),
// behind the backend seam (norm.h). macOS; on Linux it runs against the Metal emulation.
//
// Every entry point returns
//   kOk           the results are (or, in a device stream, will be once the stream's
//                 work has run) in the output buffers;
//   kUnsupported  MPS cannot compute these arguments exactly, or the path is not written
//                 yet (the message says which): the caller runs the CPU backend on the
//                 same memory; nothing was written;
//   kInternal     an MPS initializer returned nil or the command buffer failed.
// x and y must lie in registered Metal buffers at 16-byte aligned offsets (else
// kUnsupported); gamma, beta and the given statistics are read on the CPU (MPS takes
// them from an MPSCNNBatchNormalizationDataSource at initialization), so with a device
// stream the call first waits for the stream's queued work.
//
// What runs on Metal (norm_metal.mm says why the rest does not):
//   NormForwardMetal   batch norm inference and training (batch statistics), instance
//                      norm; float32.
//   NormBackwardMetal  the batch norm training gradient and the instance norm gradient
//                      (dx, dgamma, dbeta), float32, when the statistics outputs' own
//                      gradients are absent or zero.
// Batch norm training and both instance norm paths also wait for their own command
// buffer (the host reads the statistics or the per-image sums); batch norm inference and
// the batch norm gradient do not.
#ifndef TFMPS_NORM_NORM_METAL_H_
#define TFMPS_NORM_NORM_METAL_H_

#include "ops/common/backend.h"
#include "ops/norm/norm.h"

namespace tfmps {
namespace norm {

// instance: MpsInstanceNorm's view of x (groups = the batch), else batch norm's.
BackendStatus NormForwardMetal(const NormShape& s, const ForwardArgs& a, bool instance);
BackendStatus NormBackwardMetal(const NormShape& s, const BackwardArgs& a, bool instance);

}  // namespace norm
}  // namespace tfmps

#endif  // TFMPS_NORM_NORM_METAL_H_
