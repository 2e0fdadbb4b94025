// Metal backend of pooling (MPSCNNPoolingMax/Average and their gradient kernels),
// behind the backend seam (pool.h). macOS; on Linux it runs against the Metal emulation.
#ifndef TFMPS_POOL_POOL_METAL_H_
#define TFMPS_POOL_POOL_METAL_H_

#include "ops/common/backend.h"
#include "ops/pool/pool.h"

namespace tfmps {
namespace pool {}  // namespace pool
}  // namespace tfmps

#endif  // TFMPS_POOL_POOL_METAL_H_
