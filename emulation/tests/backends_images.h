// MPSImages for the Metal-backend tests (backends_module.cc), made the way a tf-mps
// kernel would make them: MPSImageDescriptor + -[MPSImage initWithDevice:imageDescriptor:]
// on the metal context's device. Plain C++ interface; the .mm holds the Objective-C.
#ifndef TFMPS_EMULATION_TESTS_BACKENDS_IMAGES_H_
#define TFMPS_EMULATION_TESTS_BACKENDS_IMAGES_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "ops/common/backend.h"

#include "ops/convert/convert.h"

namespace tfmps_test {

struct Image {
  void* handle = nullptr;  // a retained MPSImage (released by the destructor)
  int64_t n = 0, h = 0, w = 0, c = 0;
  tfmps::convert::DType dtype = tfmps::convert::DType::kFloat32;
  Image() = default;
  Image(const Image&) = delete;
  Image& operator=(const Image&) = delete;
  ~Image();
};

// Throws std::runtime_error if MPS returns nil.
std::unique_ptr<Image> MakeImage(int64_t n, int64_t h, int64_t w, int64_t c,
                                 tfmps::convert::DType dtype);

// Runs `body` on the calling thread with a metal::EncodeTarget set, as a device stream
// does: the backends encode into the target's open command buffer (metal::Submit returns
// without waiting, metal::SubmitAndWait commits and waits). After `body`, the target
// commits and waits for what is still open. Returns body's status if it failed, else
// the wait's.
tfmps::BackendStatus WithStream(const std::function<tfmps::BackendStatus()>& body);

// The emulation's test hooks (emulation/metal/metal_emu.h), for the Python tests.
void FailNextInit(const char* class_name, int count);
void FailNextCommandBuffers(int count, const std::string& message);
void ResetHooks();
int DebugLevel();

}  // namespace tfmps_test

#endif  // TFMPS_EMULATION_TESTS_BACKENDS_IMAGES_H_
