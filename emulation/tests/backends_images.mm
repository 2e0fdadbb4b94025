// See backends_images.h. Built with ARC.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <stdexcept>

#include "emulation/metal/metal_emu.h"
#include "emulation/tests/backends_images.h"
#include "ops/common/metal_context.h"

namespace tfmps_test {

namespace {
// A stream's encode target: one open command buffer at a time on the context's queue.
class TestStream : public tfmps::metal::EncodeTarget {
 public:
  std::string Encode(const std::function<void(id<MTLCommandBuffer>)>& encode) override {
    if (open_ == nil) open_ = [tfmps::metal::Queue() commandBuffer];
    if (open_ == nil) return "no command buffer";
    encode(open_);
    return "";
  }
  std::string Wait() override {
    if (open_ == nil) return "";
    id<MTLCommandBuffer> cb = open_;
    open_ = nil;
    [cb commit];
    [cb waitUntilCompleted];
    if ([cb status] == MTLCommandBufferStatusCompleted) return "";
    NSError* error = [cb error];
    return error != nil ? std::string([[error localizedDescription] UTF8String]) : "command buffer failed";
  }

 private:
  id<MTLCommandBuffer> open_ = nil;
};

MPSImageFeatureChannelFormat FormatOf(tfmps::convert::DType t) {
  switch (t) {
    case tfmps::convert::DType::kUint8: return MPSImageFeatureChannelFormatUnorm8;
    case tfmps::convert::DType::kFloat16: return MPSImageFeatureChannelFormatFloat16;
    case tfmps::convert::DType::kFloat32: break;
  }
  return MPSImageFeatureChannelFormatFloat32;
}
}  // namespace

tfmps::BackendStatus WithStream(const std::function<tfmps::BackendStatus()>& body) {
  @autoreleasepool {
    TestStream stream;
    tfmps::metal::SetThreadTarget(&stream);
    tfmps::BackendStatus s = body();
    tfmps::metal::SetThreadTarget(nullptr);
    const std::string e = stream.Wait();
    if (s.ok() && !e.empty()) s = tfmps::BackendStatus::Internal("stream: " + e);
    return s;
  }
}

Image::~Image() {
  @autoreleasepool {
    if (handle != nullptr) (void)(__bridge_transfer MPSImage*)handle;
  }
}

std::unique_ptr<Image> MakeImage(int64_t n, int64_t h, int64_t w, int64_t c,
                                 tfmps::convert::DType dtype) {
  // No throw inside the pool: an exception unwinding through @autoreleasepool skips its
  // pop (as on macOS), which would leak what the pool holds.
  void* handle = nullptr;
  @autoreleasepool {
    if (tfmps::metal::Available()) {
      MPSImageDescriptor* d =
          [MPSImageDescriptor imageDescriptorWithChannelFormat:FormatOf(dtype)
                                                         width:static_cast<NSUInteger>(w)
                                                        height:static_cast<NSUInteger>(h)
                                               featureChannels:static_cast<NSUInteger>(c)
                                                numberOfImages:static_cast<NSUInteger>(n)
                                                         usage:MTLTextureUsageShaderRead |
                                                               MTLTextureUsageShaderWrite];
      MPSImage* image = [[MPSImage alloc] initWithDevice:tfmps::metal::Device() imageDescriptor:d];
      if (image != nil) handle = (__bridge_retained void*)image;
    }
  }
  if (!tfmps::metal::Available()) throw std::runtime_error("no Metal device");
  if (handle == nullptr) throw std::runtime_error("MPSImage initWithDevice:imageDescriptor: returned nil");
  auto out = std::make_unique<Image>();
  out->handle = handle;
  out->n = n;
  out->h = h;
  out->w = w;
  out->c = c;
  out->dtype = dtype;
  return out;
}

}  // namespace tfmps_test

namespace tfmps_test {

void FailNextInit(const char* class_name, int count) { EmuFailNextInit(class_name, count); }
void FailNextCommandBuffers(int count, const std::string& message) {
  EmuFailNextCommandBuffers(count, message);
}
void ResetHooks() { EmuResetHooks(); }
int DebugLevel() { return EmuDebugLevel(); }

}  // namespace tfmps_test
