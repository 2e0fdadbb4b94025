// Metal backend of the fully connected layer (MPSCNNFullyConnected and its gradient),
// behind the backend seam (dense.h). macOS; on Linux it runs against the Metal emulation.
#ifndef TFMPS_DENSE_DENSE_METAL_H_
#define TFMPS_DENSE_DENSE_METAL_H_

#include "ops/common/backend.h"
#include "ops/dense/dense.h"

namespace tfmps {
namespace dense {}  // namespace dense
}  // namespace tfmps

#endif  // TFMPS_DENSE_DENSE_METAL_H_
