// Metal backend of batch and instance normalization (MPSCNNBatchNormalization, MPSCNNInstanceNormalization and their gradient kernels),
// behind the backend seam (norm.h). macOS; on Linux it runs against the Metal emulation.
#ifndef TFMPS_NORM_NORM_METAL_H_
#define TFMPS_NORM_NORM_METAL_H_

#include "ops/common/backend.h"
#include "ops/norm/norm.h"

namespace tfmps {
namespace norm {}  // namespace norm
}  // namespace tfmps

#endif  // TFMPS_NORM_NORM_METAL_H_
