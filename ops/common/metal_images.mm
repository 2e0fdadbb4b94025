// NHWC buffers <-> MPSImages for the Metal backends (see metal_images.h). Built with ARC.
#import <Metal/Metal.h>
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "ops/common/metal_context.h"
#include "ops/common/metal_images.h"

namespace tfmps {
namespace metal {
namespace {

std::string Str(int64_t v) { return std::to_string(v); }

}  // namespace

std::string CheckImage(const char* name, const ImageShape& s) {
  if (s.h > kMaxTextureSide || s.w > kMaxTextureSide) {
    return std::string(name) + " is " + Str(s.h) + " x " + Str(s.w) + " pixels (Metal's limit is 16384 a side)";
  }
  const int64_t slices = s.n * ((s.c + 3) / 4);
  if (slices > kMaxArraySlices) {
    return std::string(name) + " has " + Str(slices) + " texture slices (Metal's limit is " + Str(kMaxArraySlices) +
           ")";
  }
  return "";
}

MPSImage* MakeImage(const ImageShape& s) {
  MPSImageDescriptor* d =
      [MPSImageDescriptor imageDescriptorWithChannelFormat:MPSImageFeatureChannelFormatFloat32
                                                     width:static_cast<NSUInteger>(s.w)
                                                    height:static_cast<NSUInteger>(s.h)
                                           featureChannels:static_cast<NSUInteger>(s.c)
                                            numberOfImages:static_cast<NSUInteger>(s.n)
                                                     usage:MTLTextureUsageShaderRead | MTLTextureUsageShaderWrite];
  if (d == nil) return nil;
  d.storageMode = MTLStorageModePrivate;  // only the GPU touches these
  return [[MPSImage alloc] initWithDevice:Device() imageDescriptor:d];
}

MPSMatrix* Rows(const void* p, const ImageShape& s, bool* found) {
  const size_t row_bytes = static_cast<size_t>(s.h * s.w * s.c) * sizeof(float);
  const BufferRef ref = FindAlignedBuffer(p, static_cast<size_t>(s.n) * row_bytes);
  *found = ref.found();
  if (!ref.found()) return nil;
  MPSMatrixDescriptor* d = [MPSMatrixDescriptor matrixDescriptorWithRows:static_cast<NSUInteger>(s.n)
                                                                 columns:static_cast<NSUInteger>(s.h * s.w * s.c)
                                                                rowBytes:row_bytes
                                                                dataType:MPSDataTypeFloat32];
  if (d == nil) return nil;
  return [[MPSMatrix alloc] initWithBuffer:BufferOf(ref) offset:ref.offset descriptor:d];
}

MPSMatrix* Operands::Matrix(const char* name, const void* p, const ImageShape& s) {
  if (!status.ok()) return nil;
  bool found = false;
  MPSMatrix* m = Rows(p, s, &found);
  if (!found) {
    status = BackendStatus::Unsupported(op + ": " + name + " is not in a 16-byte aligned, registered Metal buffer");
  } else if (m == nil) {
    status = BackendStatus::Internal(op + ": MPSMatrix initWithBuffer: returned nil for " + name);
  }
  return m;
}

MPSImage* Operands::Image(const char* name, const ImageShape& s) {
  if (!status.ok()) return nil;
  MPSImage* image = MakeImage(s);
  if (image == nil) status = BackendStatus::Internal(op + ": MPSImage initWithDevice: returned nil for " + name);
  return image;
}

MPSMatrixCopyToImage* ToImage(Operands* ops) {
  return ops->Kernel([[MPSMatrixCopyToImage alloc] initWithDevice:Device()
                                                       dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels],
                     "MPSMatrixCopyToImage initWithDevice:dataLayout:");
}

MPSImageCopyToMatrix* ToMatrix(Operands* ops) {
  return ops->Kernel([[MPSImageCopyToMatrix alloc] initWithDevice:Device()
                                                       dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels],
                     "MPSImageCopyToMatrix initWithDevice:dataLayout:");
}

}  // namespace metal
}  // namespace tfmps
