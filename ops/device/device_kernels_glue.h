// What the device kernels' glue (device_kernels.cc) shares with the tf_mps families'
// device kernels (each family's *_ops.cc compiled with TFMPS_DEVICE_KERNELS): the stream
// of a kernel, running a Metal path with the CPU fallback, copy-on-write of variables in
// stream order, and each family's registration entry point. TF C++ API.
#ifndef TFMPS_DEVICE_DEVICE_KERNELS_GLUE_H_
#define TFMPS_DEVICE_DEVICE_KERNELS_GLUE_H_

#include <functional>

#include "ops/common/backend.h"
#include "ops/device/metal_device.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_var.h"

namespace tfmps {
namespace device_glue {

// The tf-mps stream the kernel runs on, nullptr off the device.
device::Stream* StreamOf(tensorflow::OpKernelContext* ctx);

// Runs `metal` with the kernel's stream as the thread's Metal target; when it returns
// kUnsupported, waits for the stream and runs `cpu` on the same memory. kInternal, or no
// stream, becomes the kernel's error.
void Run(tensorflow::OpKernelContext* ctx, const std::function<BackendStatus()>& metal,
         const std::function<void()>& cpu);

// dst[0, bytes) = src[0, bytes) in the kernel's stream order (a blit).
absl::Status CopyInStream(tensorflow::OpKernelContext* ctx, const void* src, void* dst, size_t bytes);

// Before an in-place update of var (its mutex held): when a reader still shares the
// buffer, or in copy-on-read mode, gives var a copy made in stream order.
absl::Status CopyOnWrite(tensorflow::OpKernelContext* ctx, tensorflow::Var* var);

// Registers every device kernel for the configured device type; false when the device is
// off (nothing registered). Runs when the library loads.
bool RegisterDeviceKernels();

}  // namespace device_glue

// Each family's device kernels, defined in its *_ops.cc compiled with TFMPS_DEVICE_KERNELS.
namespace optim {
void RegisterDeviceKernels(const char* device_type);
}  // namespace optim
namespace conv {
void RegisterDeviceKernels(const char* device_type);
}  // namespace conv
namespace pool {
void RegisterDeviceKernels(const char* device_type);
}  // namespace pool
namespace norm {
void RegisterDeviceKernels(const char* device_type);
}  // namespace norm
namespace dense {
void RegisterDeviceKernels(const char* device_type);
}  // namespace dense

}  // namespace tfmps

#endif  // TFMPS_DEVICE_DEVICE_KERNELS_GLUE_H_
