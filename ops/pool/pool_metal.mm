// Metal backend of pooling (see pool_metal.h). Built with ARC. Nothing here has run on a
// Mac yet: it is type-checked against the project's declarations of Apple's API and
// executed on Linux against the Metal emulation (emulation/mps/mps_cnn_pooling.mm).
//
// One command buffer per call (the stream's, with a thread target), as norm_metal.mm:
//   NHWC buffer --MPSMatrixCopyToImage--> MPSImage --MPSCNNPooling*--> MPSImage
//   --MPSImageCopyToMatrix--> NHWC buffer
//
// Geometry. Apple (MPSCNNPooling): output (x, y)'s window has its top left corner at
// (offset.x - floor(kernelWidth/2) + x * strideInPixelsX, likewise y) and spans
// kernelWidth x kernelHeight pixels. TF's (pool.h): column j * sw - pad_left. So
//   offset.x = floor(k_w / 2) - pad_left, offset.y = floor(k_h / 2) - pad_top,
// and the destination is exactly [N, OH, OW, C] (the clip rectangle its whole size).
// Padding: edgeMode Clamp. Average pooling (Apple): with Clamp "the filtering window is
// shrunk to remain within the source image borders", fewer values averaged: TF's divisor
// (the valid cells), zeroPadSizeX/Y = 0 (padding that would count). Max pooling: Clamp
// reads the nearest border pixel for a cell outside the image; every TF window holds a
// cell of the image (pool.h) and the window's part inside the image is a rectangle, so
// the clamped pixel is one of the window's own valid cells and the maximum is TF's.
// (Zero would read 0.0, wrong for all-negative windows.)
//
// Gradients: NHWC dy (and x for max) to MPSImages, MPSCNNPooling{Max,Average}Gradient with
// the forward kernel's -resultStateForSourceImage:... state, dx image back to NHWC, one
// command buffer. Apple (MPSCNNPoolingGradient): the sum runs over the source gradient's
// pixels from primaryOffset over sourceSize, "in normal operation" the forward's
// clipRect (origin 0, size OW x OH here); the windows sit in the secondary source (the
// forward's source image): secondaryOffset = the forward's offset above is this backend's
// reading, to be confirmed on a Mac. The average gradient reads only the source image's
// size (Apple: "any correctly sized image will produce correct results"), so its x image
// is left unfilled. The max gradient finds the arg-max again from x; Apple: with several
// maximal values in a window "one of them is picked ... implementation specific", while
// TF routes to the first in scan order, so MaxPool2DGradMetal reads x on the host (after
// the stream's wait: a sync point) and declines any window with a tied maximum, or any NaN
// (MPS's NaN rule is not documented). That scan costs about one CPU max-pool forward.
//
// kUnsupported (the CPU backend runs): empty tensors; images beyond Metal's limits
// (16384 per side, 2048 texture slices of 4 channels); arrays not in a registered,
// 16-byte aligned buffer; max gradients with ties or NaN. Apple documents no kernel-size
// limit for MPSCNNPooling (odd or even sizes), so none is imposed. float16 never reaches
// here (pool_ops.cc keeps it on the CPU path).
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "ops/common/metal_context.h"
#include "ops/common/metal_images.h"
#include "ops/pool/pool_metal.h"

namespace tfmps {
namespace pool {
namespace {

using metal::CheckImage;
using metal::ImageShape;
using metal::Operands;
using metal::ToImage;
using metal::ToMatrix;

ImageShape InShape(const Pool2DGeometry& g) { return {g.batch, g.in_h, g.in_w, g.channels}; }
ImageShape OutShape(const Pool2DGeometry& g) { return {g.batch, g.out_h, g.out_w, g.channels}; }

// "" or why these sizes stay on the CPU.
std::string Declines(const Pool2DGeometry& g) {
  if (g.in_size() == 0 || g.out_size() == 0) return "an empty tensor";
  std::string why = CheckImage("the input", InShape(g));
  if (why.empty()) why = CheckImage("the output", OutShape(g));
  return why;
}

// TF's window origin as MPS's offset (the window centre of output (0, 0)).
MPSOffset OffsetOf(const Pool2DGeometry& g) {
  MPSOffset o;
  o.x = static_cast<NSInteger>(g.k_w / 2 - g.pad_left);
  o.y = static_cast<NSInteger>(g.k_h / 2 - g.pad_top);
  o.z = 0;
  return o;
}

// kernel: an MPSCNNPoolingMax or MPSCNNPoolingAverage, configured.
BackendStatus EncodeForward(Operands& ops, const Pool2DGeometry& g, const float* x, float* y,
                            MPSCNNPooling* kernel) {
  MPSMatrix* xm = ops.Matrix("x", x, InShape(g));
  MPSMatrix* ym = ops.Matrix("y", y, OutShape(g));
  MPSImage* xi = ops.Image("x", InShape(g));
  MPSImage* yi = ops.Image("y", OutShape(g));
  MPSMatrixCopyToImage* to_image = ToImage(&ops);
  MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
  if (!ops.status.ok()) return ops.status;
  kernel.offset = OffsetOf(g);
  kernel.edgeMode = MPSImageEdgeModeClamp;
  return metal::Submit(ops.op, [&](id<MTLCommandBuffer> cb) {
    [to_image encodeToCommandBuffer:cb sourceMatrix:xm destinationImage:xi];
    [kernel encodeToCommandBuffer:cb sourceImage:xi destinationImage:yi];
    [to_matrix encodeToCommandBuffer:cb sourceImage:yi destinationMatrix:ym];
  });
}

// The gradient kernels, configured as Apple describes the normal operation: the source
// gradient's pixels from primaryOffset = the forward's clipRect origin (0) over sourceSize
// = the forward's clipRect size (OW x OH); the windows placed in the forward's source
// (the secondary source) by secondaryOffset = the forward's offset. That last mapping is
// this backend's reading of Apple's text (the emulation's fake takes the same): a Mac run
// must confirm it (docs/metal-emulation.md).
void ConfigureGradient(MPSCNNPoolingGradient* kernel, const Pool2DGeometry& g) {
  MPSOffset zero;
  zero.x = 0;
  zero.y = 0;
  zero.z = 0;
  kernel.primaryOffset = zero;
  kernel.secondaryOffset = OffsetOf(g);
  kernel.sourceSize = MTLSizeMake(static_cast<NSUInteger>(g.out_w), static_cast<NSUInteger>(g.out_h), 1);
}

// forward_kernel: the forward pooling whose result state the gradient takes.
BackendStatus EncodeGradient(Operands& ops, const Pool2DGeometry& g, const float* x, const float* dy, float* dx,
                             MPSCNNPooling* forward_kernel, MPSCNNPoolingGradient* kernel) {
  MPSMatrix* dym = ops.Matrix("dy", dy, OutShape(g));
  MPSMatrix* dxm = ops.Matrix("dx", dx, InShape(g));
  MPSMatrix* xm = x != nullptr ? ops.Matrix("x", x, InShape(g)) : nil;
  MPSImage* dyi = ops.Image("dy", OutShape(g));
  MPSImage* xi = ops.Image("x", InShape(g));  // the average's: only its size matters
  MPSImage* dxi = ops.Image("dx", InShape(g));
  MPSMatrixCopyToImage* to_image = ToImage(&ops);
  MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
  if (!ops.status.ok()) return ops.status;
  forward_kernel.offset = OffsetOf(g);
  forward_kernel.edgeMode = MPSImageEdgeModeClamp;
  MPSState* state = [forward_kernel resultStateForSourceImage:xi sourceStates:nil destinationImage:dyi];
  if (state == nil) return BackendStatus::Internal(ops.op + ": resultStateForSourceImage: returned nil");
  ConfigureGradient(kernel, g);
  return metal::Submit(ops.op, [&](id<MTLCommandBuffer> cb) {
    [to_image encodeToCommandBuffer:cb sourceMatrix:dym destinationImage:dyi];
    if (xm != nil) [to_image encodeToCommandBuffer:cb sourceMatrix:xm destinationImage:xi];
    [kernel encodeToCommandBuffer:cb sourceGradient:dyi sourceImage:xi gradientState:state destinationGradient:dxi];
    [to_matrix encodeToCommandBuffer:cb sourceImage:dxi destinationMatrix:dxm];
  });
}

// "" when every window of x has a single maximum and x no NaN, else why not.
std::string TiesOrNan(const Pool2DGeometry& g, const float* x) {
  const int64_t C = g.channels;
  std::vector<float> best(static_cast<size_t>(C));
  std::vector<int> count(static_cast<size_t>(C));
  for (int64_t n = 0; n < g.batch; ++n) {
    const float* xn = x + n * g.in_h * g.in_w * C;
    for (int64_t i = 0; i < g.out_h; ++i) {
      const int64_t h0 = std::max<int64_t>(0, i * g.stride_h - g.pad_top);
      const int64_t h1 = std::min(g.in_h, i * g.stride_h - g.pad_top + g.k_h);
      for (int64_t j = 0; j < g.out_w; ++j) {
        const int64_t v0 = std::max<int64_t>(0, j * g.stride_w - g.pad_left);
        const int64_t v1 = std::min(g.in_w, j * g.stride_w - g.pad_left + g.k_w);
        std::fill(best.begin(), best.end(), -std::numeric_limits<float>::infinity());
        std::fill(count.begin(), count.end(), 0);
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t v = v0; v < v1; ++v) {
            const float* p = xn + (h * g.in_w + v) * C;
            for (int64_t c = 0; c < C; ++c) {
              const float e = p[c];
              if (std::isnan(e)) return "x holds a NaN (how MPS's max treats NaN is not documented)";
              if (e > best[c]) {
                best[c] = e;
                count[c] = 1;
              } else if (e == best[c]) {
                ++count[c];
              }
            }
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          if (count[c] != 1) {
            return "a window has tied maxima (MPSCNNPoolingMaxGradient's pick is implementation specific, TF's "
                   "the first in scan order)";
          }
        }
      }
    }
  }
  return "";
}

// The host reads x: GPU work queued on this thread's stream must be done first.
BackendStatus WaitForStream(const std::string& op) {
  if (metal::ThreadTarget() == nullptr) return BackendStatus::Ok();
  return metal::SubmitAndWait(op, [](id<MTLCommandBuffer>) {});
}

// TFMPS_POOL_METAL_TRACE=1: one stderr line per entry point call with its outcome (to see
// which calls a TF program sends through Metal, and why the others decline).
BackendStatus Traced(const std::string& op, BackendStatus st) {
  static const bool trace = [] {
    const char* v = std::getenv("TFMPS_POOL_METAL_TRACE");
    return v != nullptr && v[0] == '1';
  }();
  if (trace) {
    std::fprintf(stderr, "tf-mps pool metal: %s %s%s%s\n", op.c_str(),
                 st.ok() ? "ok" : st.code == BackendStatus::Code::kUnsupported ? "unsupported" : "internal",
                 st.message.empty() ? "" : ": ", st.message.c_str());
  }
  return st;
}

}  // namespace

static BackendStatus MaxPool2DMetalImpl(const Pool2DGeometry& g, const float* x, float* y) {
  const std::string op = "MaxPool2DMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  const std::string why = Declines(g);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  @autoreleasepool {
    Operands ops{op};
    MPSCNNPoolingMax* kernel = ops.Kernel([[MPSCNNPoolingMax alloc] initWithDevice:metal::Device()
                                                                       kernelWidth:static_cast<NSUInteger>(g.k_w)
                                                                      kernelHeight:static_cast<NSUInteger>(g.k_h)
                                                                   strideInPixelsX:static_cast<NSUInteger>(g.stride_w)
                                                                   strideInPixelsY:static_cast<NSUInteger>(g.stride_h)],
                                          "MPSCNNPoolingMax initWithDevice:kernelWidth:...");
    if (!ops.status.ok()) return ops.status;
    return EncodeForward(ops, g, x, y, kernel);
  }
}

static BackendStatus AvgPool2DMetalImpl(const Pool2DGeometry& g, const float* x, float* y) {
  const std::string op = "AvgPool2DMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  const std::string why = Declines(g);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  @autoreleasepool {
    Operands ops{op};
    MPSCNNPoolingAverage* kernel =
        ops.Kernel([[MPSCNNPoolingAverage alloc] initWithDevice:metal::Device()
                                                    kernelWidth:static_cast<NSUInteger>(g.k_w)
                                                   kernelHeight:static_cast<NSUInteger>(g.k_h)
                                                strideInPixelsX:static_cast<NSUInteger>(g.stride_w)
                                                strideInPixelsY:static_cast<NSUInteger>(g.stride_h)],
                   "MPSCNNPoolingAverage initWithDevice:kernelWidth:...");
    if (!ops.status.ok()) return ops.status;
    kernel.zeroPadSizeX = 0;  // padding that would count in the divisor: none (TF's rule)
    kernel.zeroPadSizeY = 0;
    return EncodeForward(ops, g, x, y, kernel);
  }
}

static BackendStatus AvgPool2DGradMetalImpl(const Pool2DGeometry& g, const float* dy, float* dx) {
  const std::string op = "AvgPool2DGradMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  const std::string why = Declines(g);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  @autoreleasepool {
    Operands ops{op};
    const NSUInteger kw = static_cast<NSUInteger>(g.k_w), kh = static_cast<NSUInteger>(g.k_h),
                     sx = static_cast<NSUInteger>(g.stride_w), sy = static_cast<NSUInteger>(g.stride_h);
    MPSCNNPoolingAverage* forward =
        ops.Kernel([[MPSCNNPoolingAverage alloc] initWithDevice:metal::Device() kernelWidth:kw kernelHeight:kh
                                                strideInPixelsX:sx strideInPixelsY:sy],
                   "MPSCNNPoolingAverage initWithDevice:kernelWidth:...");
    MPSCNNPoolingAverageGradient* kernel =
        ops.Kernel([[MPSCNNPoolingAverageGradient alloc] initWithDevice:metal::Device() kernelWidth:kw kernelHeight:kh
                                                        strideInPixelsX:sx strideInPixelsY:sy],
                   "MPSCNNPoolingAverageGradient initWithDevice:kernelWidth:...");
    if (!ops.status.ok()) return ops.status;
    forward.zeroPadSizeX = 0;
    forward.zeroPadSizeY = 0;
    kernel.zeroPadSizeX = 0;
    kernel.zeroPadSizeY = 0;
    return EncodeGradient(ops, g, nullptr, dy, dx, forward, kernel);
  }
}

static BackendStatus MaxPool2DGradMetalImpl(const Pool2DGeometry& g, const float* x, const float* dy, float* dx) {
  const std::string op = "MaxPool2DGradMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  std::string why = Declines(g);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  if (!metal::FindAlignedBuffer(x, static_cast<size_t>(g.in_size()) * sizeof(float)).found()) {
    return BackendStatus::Unsupported(op + ": x is not in a 16-byte aligned, registered Metal buffer");
  }
  BackendStatus st = WaitForStream(op);
  if (!st.ok()) return st;
  why = TiesOrNan(g, x);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  @autoreleasepool {
    Operands ops{op};
    const NSUInteger kw = static_cast<NSUInteger>(g.k_w), kh = static_cast<NSUInteger>(g.k_h),
                     sx = static_cast<NSUInteger>(g.stride_w), sy = static_cast<NSUInteger>(g.stride_h);
    MPSCNNPoolingMax* forward =
        ops.Kernel([[MPSCNNPoolingMax alloc] initWithDevice:metal::Device() kernelWidth:kw kernelHeight:kh
                                            strideInPixelsX:sx strideInPixelsY:sy],
                   "MPSCNNPoolingMax initWithDevice:kernelWidth:...");
    MPSCNNPoolingMaxGradient* kernel =
        ops.Kernel([[MPSCNNPoolingMaxGradient alloc] initWithDevice:metal::Device() kernelWidth:kw kernelHeight:kh
                                                    strideInPixelsX:sx strideInPixelsY:sy],
                   "MPSCNNPoolingMaxGradient initWithDevice:kernelWidth:...");
    if (!ops.status.ok()) return ops.status;
    return EncodeGradient(ops, g, x, dy, dx, forward, kernel);
  }
}

BackendStatus MaxPool2DMetal(const Pool2DGeometry& g, const float* x, float* y) {
  return Traced("MaxPool2DMetal", MaxPool2DMetalImpl(g, x, y));
}

BackendStatus AvgPool2DMetal(const Pool2DGeometry& g, const float* x, float* y) {
  return Traced("AvgPool2DMetal", AvgPool2DMetalImpl(g, x, y));
}

BackendStatus AvgPool2DGradMetal(const Pool2DGeometry& g, const float* dy, float* dx) {
  return Traced("AvgPool2DGradMetal", AvgPool2DGradMetalImpl(g, dy, dx));
}

BackendStatus MaxPool2DGradMetal(const Pool2DGeometry& g, const float* x, const float* dy, float* dx) {
  return Traced("MaxPool2DGradMetal", MaxPool2DGradMetalImpl(g, x, dy, dx));
}

}  // namespace pool
}  // namespace tfmps
