// The MPS emulation's internal helpers, shared by mps.mm, mps_optimizers.mm and mps_cnn.mm (and the
// fakes' tests). Never included by ops/.
#ifndef TFMPS_EMULATION_MPS_MPS_EMU_H_
#define TFMPS_EMULATION_MPS_MPS_EMU_H_

#include <cstddef>
#include <cstdint>

#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

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

#endif  // TFMPS_EMULATION_MPS_MPS_EMU_H_
