// Data converters between TensorFlow tensors, MPS image layout and MPS matrices: the
// backend interface of the convert family, and the index maps every backend and test
// follows.
//
// A logical batch is N items of H x W pixels with C feature channels; element (n,h,w,c).
// Layouts and their element offsets (S = ceil(C/4)):
//   kNhwc       [N,H,W,C]       ((n*H + h)*W + w)*C + c          TF's layout
//   kSequence   [N,T,C]         (n*T + t)*C + c                  kNhwc with H = T, W = 1
//   kTimeMajor  [T,N,C]         (t*N + n)*C + c                  per-timestep matrices of
//                                                                the RNN ops (W = 1)
//   kImage      [N,S,H,W,4]     (((n*S + c/4)*H + h)*W + w)*4 + c%4
//               MPSImage's memory order: slices of 4 channels, N*S texture-array
//               slices. Channels c >= C of the last slice are padding and are zero.
//   kMatrixHwc  [N, H*W*C]      n*H*W*C + (h*W + w)*C + c        MPSImageCopyToMatrix with
//               MPSDataLayoutHeightxWidthxFeatureChannels: one image per row
//   kMatrixChw  [N, C*H*W]      n*C*H*W + (c*H + h)*W + w        ... with
//               MPSDataLayoutFeatureChannelsxHeightxWidth
//
// Values on the way (per element of channel c):
//   x = load(src)              uint8 is unorm8: q / 255; float16 and float32 as they are
//   y = x*scale[c] + bias[c]   kForward (scale/bias optional: normalization folded in)
//   y = (x - bias[c])/scale[c] kInverse (undoes kForward)
//   store(dst, y)              uint8: round-to-nearest-even(clamp(y, 0, 1) * 255);
//                              float16: round to nearest; float32 as is
// With no scale/bias every same-dtype round trip is exact, and uint8 -> float -> uint8
// is exact as well.
#ifndef TFMPS_CONVERT_CONVERT_H_
#define TFMPS_CONVERT_CONVERT_H_

#include <cstdint>

#include "ops/common/backend.h"

namespace tfmps {
namespace convert {

enum class Layout { kNhwc, kSequence, kTimeMajor, kImage, kMatrixHwc, kMatrixChw };
enum class DType { kUint8, kFloat16, kFloat32 };
enum class Affine { kForward, kInverse };

struct Geometry {
  int64_t n = 0, h = 0, w = 0, c = 0;
  int64_t slices() const { return c / 4 + (c % 4 != 0); }  // ceil(c/4), overflow-free
};

struct ConvertArgs {
  Geometry geometry;
  Layout src_layout = Layout::kNhwc, dst_layout = Layout::kNhwc;
  DType src_type = DType::kFloat32, dst_type = DType::kFloat32;
  const void* src = nullptr;  // the whole src_layout tensor, of src_type
  void* dst = nullptr;        // the whole dst_layout tensor (image padding included)
  const float* scale = nullptr;  // C entries, or nullptr (1)
  const float* bias = nullptr;   // C entries, or nullptr (0)
  Affine affine = Affine::kForward;
};

// CPU backend: every destination element written once (padding zeroed), rows spread
// over `parallel`.
void ConvertCpu(const ConvertArgs& args, const ParallelFor& parallel);
// Which build of the CPU kernels ConvertCpu runs here: "avx2+fma+f16c" or "base".
const char* ConvertCpuIsa();

// Metal backend (convert_metal.mm, macOS only): the MPS converters between memory and
// MPSImages, the building blocks of image-backed tensors on the GPU. `image` is an
// MPSImage passed as an opaque pointer (__bridge MPSImage* inside .mm) whose
// featureChannels == geometry.c and numberOfImages >= geometry.n; its feature channel
// format must match the memory side's dtype (MPS converts no values on these paths), and
// scale/bias must be absent: otherwise kUnsupported and the caller converts on the CPU
// first. Memory-side pointers of the matrix variants must lie in registered MTLBuffers
// (metal_context.h).
//   WriteImageMetal:    args.src (kNhwc/kSequence: HWC, kMatrixChw: CHW) -> image,
//                       writeBytes:dataLayout:imageIndex: per image
//   ReadImageMetal:     image -> args.dst (same layouts), readBytes:dataLayout:imageIndex:
//   ImageToMatrixMetal: image -> args.dst (kMatrixHwc or kMatrixChw), MPSImageCopyToMatrix
//   MatrixToImageMetal: args.src (kMatrixHwc or kMatrixChw) -> image, MPSMatrixCopyToImage
BackendStatus WriteImageMetal(void* image, const ConvertArgs& args);
BackendStatus ReadImageMetal(void* image, const ConvertArgs& args);
BackendStatus ImageToMatrixMetal(void* image, const ConvertArgs& args);
BackendStatus MatrixToImageMetal(void* image, const ConvertArgs& args);

}  // namespace convert
}  // namespace tfmps

#endif  // TFMPS_CONVERT_CONVERT_H_
