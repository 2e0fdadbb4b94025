// TF glue of max and average pooling: op definitions, validation, kernels (being written).
// Compiled twice: into the op library, and with TFMPS_DEVICE_KERNELS into the device's.
#ifdef TFMPS_DEVICE_KERNELS
#include "ops/device/device_kernels_glue.h"

namespace tfmps {
namespace pool {
void RegisterDeviceKernels(const char* /*type*/) {}
}  // namespace pool
}  // namespace tfmps
#endif  // TFMPS_DEVICE_KERNELS
