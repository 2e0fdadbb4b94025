// The MPS emulation's internal helpers, shared by mps.mm, mps_optimizers.mm and mps_cnn.mm (and the
// fakes' tests). Never included by ops/.
#ifndef TFMPS_EMULATION_MPS_MPS_EMU_H_
#define TFMPS_EMULATION_MPS_MPS_EMU_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include "emulation/metal/metal_emu.h"

// Bytes per element of an MPSDataType (the low 16 bits count bits).
inline size_t EmuElementSize(MPSDataType t) {
  return (static_cast<uint32_t>(t) & 0xFFFFu) / 8;
}

// A printable name, for messages.
const char* EmuDataTypeName(MPSDataType t);

// The byte range [begin, end) a vector covers inside its buffer.
struct EmuByteRange {
  id<MTLBuffer> buffer;
  size_t begin, end;
};
EmuByteRange EmuRangeOf(MPSVector* v);

// MPSKernel's ivars are declared here, not in its @implementation, because subclasses
// live in other files (mps_optimizers.mm): clang lays out a subclass from the ivars it
// can see, and the emulation's runtime, unlike Apple's, does not slide ivars at load.
// The private initializer is for subclasses whose public -initWithDevice: is
// NS_UNAVAILABLE (the optimizers): it checks the device and the EmuFailNextInit hook.
@interface MPSKernel () {
  id<MTLDevice> _device;
  NSString* _label;
}
- (instancetype)initEmuWithDevice:(id<MTLDevice>)device;
@end

// What the kernels (mps.mm's copies, mps_cnn.mm's convolutions) need of an image, beyond
// Apple's API: the GPU copy in convert.h's kImage order, and the pending-write count that
// refuses CPU access while encoded GPU writes have not run.
@interface MPSImage ()
- (uint8_t*)gpuBytes;
- (size_t)elementBytes;
- (NSUInteger)slices;
- (void)beginGpuWrite;
- (void)endGpuWrite;
- (size_t)indexOfImage:(NSUInteger)n channel:(NSUInteger)c row:(NSUInteger)h column:(NSUInteger)w;
@end

// An image a fake computes on: not nil, on `device`, float32 (`why` ends the emulation
// limit's message, e.g. "the fake pools float32 only").
inline void EmuCheckFloatImage(const char* method, const char* name, MPSImage* image, id<MTLDevice> device,
                               const char* why) {
  if (image == nil) EmuValidationFailure(method, std::string(name) + " is nil");
  if ([image device] != device) EmuValidationFailure(method, std::string(name) + " is on another device");
  if ([image featureChannelFormat] != MPSImageFeatureChannelFormatFloat32) {
    EmuValidationFailure(method, std::string("emulation limit: ") + name + " is not a float32 image (" + why + ")");
  }
}

// Every image of a float32 `image` as dense NHWC floats.
inline std::vector<float> EmuReadNhwc(MPSImage* image) {
  const int64_t N = [image numberOfImages], H = [image height], W = [image width], C = [image featureChannels];
  std::vector<float> out(static_cast<size_t>(N * H * W * C));
  const uint8_t* src = [image gpuBytes];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c)
          std::memcpy(&out[((n * H + h) * W + w) * C + c],
                      src + [image indexOfImage:n channel:c row:h column:w] * sizeof(float), sizeof(float));
  return out;
}

// Writes every image of a float32 `image` from NHWC values, zeroing the padding channels
// of the last slice.
inline void EmuWriteNhwc(MPSImage* image, const std::vector<float>& in) {
  const int64_t N = [image numberOfImages], H = [image height], W = [image width], C = [image featureChannels];
  uint8_t* dst = [image gpuBytes];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        for (int64_t c = 0; c < C; ++c)
          std::memcpy(dst + [image indexOfImage:n channel:c row:h column:w] * sizeof(float),
                      &in[((n * H + h) * W + w) * C + c], sizeof(float));
        for (int64_t c = C; c % 4 != 0; ++c)
          std::memset(dst + [image indexOfImage:n channel:c row:h column:w] * sizeof(float), 0, sizeof(float));
      }
}

#endif  // TFMPS_EMULATION_MPS_MPS_EMU_H_
