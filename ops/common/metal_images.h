// NHWC buffers <-> MPSImages for the Metal backends (metal_images.mm). Built with ARC.
// Objective-C++ only: include from .mm files.
//
// A backend views an NHWC tensor in a registered buffer as an MPSMatrix of n rows (images)
// of h*w*c floats (Rows / Operands::Matrix), copies it into a float32 MPSImage with
// MPSMatrixCopyToImage (ToImage, layout HeightxWidthxFeatureChannels), runs its kernel,
// and copies the result back with MPSImageCopyToMatrix (ToMatrix). Operands collects the
// first failure of one call: kUnsupported for a pointer not in a 16-byte aligned,
// registered buffer, kInternal for any MPS initializer returning nil.
#ifndef TFMPS_COMMON_METAL_IMAGES_H_
#define TFMPS_COMMON_METAL_IMAGES_H_

#ifndef __OBJC__
#error "ops/common/metal_images.h is Objective-C++: include it from .mm files only"
#endif

#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <cstdint>
#include <string>

#include "ops/common/backend.h"

namespace tfmps {
namespace metal {

constexpr int64_t kMaxArraySlices = 2048;  // Metal: layers of a 2D texture array
constexpr int64_t kMaxTextureSide = 16384;

// n images of h x w pixels of c channels.
struct ImageShape {
  int64_t n = 0, h = 0, w = 0, c = 0;
};

// "" or why `name` of shape s is beyond Metal's texture limits (16384 a side, 2048 slices
// of 4 channels).
std::string CheckImage(const char* name, const ImageShape& s);

// A float32, GPU-private MPSImage of shape s (nil: MPS returned nil).
MPSImage* MakeImage(const ImageShape& s);

// An NHWC tensor as an MPSMatrix of n rows (images) of h*w*c floats over its buffer.
// nil with *found false: not in a registered aligned buffer; nil with *found true: MPS
// returned nil.
MPSMatrix* Rows(const void* p, const ImageShape& s, bool* found);

// The matrices, images and kernels of one call; Internal/Unsupported on the first failure.
struct Operands {
  std::string op;
  BackendStatus status = BackendStatus::Ok();

  MPSMatrix* Matrix(const char* name, const void* p, const ImageShape& s);
  // rows x cols floats at p (the shape {rows, 1, 1, cols}).
  MPSMatrix* Matrix(const char* name, const void* p, int64_t rows, int64_t cols) {
    return Matrix(name, p, ImageShape{rows, 1, 1, cols});
  }
  MPSImage* Image(const char* name, const ImageShape& s);
  // `images` images of 1 x 1 x `channels`.
  MPSImage* Image(const char* name, int64_t images, int64_t channels) {
    return Image(name, ImageShape{images, 1, 1, channels});
  }
  template <typename T>
  T* Kernel(T* kernel, const char* what) {
    if (status.ok() && kernel == nil) status = BackendStatus::Internal(op + ": " + what + " returned nil");
    return kernel;
  }
};

// NHWC matrix -> image and back (HeightxWidthxFeatureChannels); nil sets ops->status.
MPSMatrixCopyToImage* ToImage(Operands* ops);
MPSImageCopyToMatrix* ToMatrix(Operands* ops);

}  // namespace metal
}  // namespace tfmps

#endif  // TFMPS_COMMON_METAL_IMAGES_H_
