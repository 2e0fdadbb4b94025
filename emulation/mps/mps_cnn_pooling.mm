// CPU fakes of MPS's MPSCNNPooling.h: MPSCNNPoolingMax/Average and their gradients.
// Linux emulation only; built with ARC. They compute with the CPU backend (ops/pool/pool.h).
//
// What Apple documents (developer.apple.com, MPSCNNPooling / MPSCNNPoolingAverage), and
// what the fake does with it:
//  * Window of output (x, y) (clip rectangle origin 0): top left corner at
//    (offset.x - floor(kernelWidth/2) + strideInPixelsX * x, likewise y), kernelWidth x
//    kernelHeight pixels. The fake turns this into the CPU backend's geometry:
//    pad_left = floor(kernelWidth/2) - offset.x, pad_top likewise, out = the destination's
//    size, and runs MaxPool2DCpu / AvgPool2DCpu, whose windows are the same cells.
//  * MPSCNNPoolingAverage with edgeMode Clamp: the window shrinks to the part inside the
//    source, fewer values averaged (the CPU backend's divisor, the valid cells).
//  * MPSCNNPoolingMax with edgeMode Clamp: cells outside read the nearest border pixel,
//    which (the window's inside part being a non-empty rectangle) is one of the window's
//    own cells: the maximum over the inside cells, MaxPool2DCpu's.
//  * MPSCNNPoolingGradient: the sum runs over the source gradient's pixels from
//    primaryOffset to primaryOffset + sourceSize (normally the forward's clipRect);
//    y is a pixel of the secondary source (the forward's source image). Max: the
//    arg-max found again from the source image (MaxPool2DGradCpu); average: the window
//    weights 1 / N(x), N(x) as MPSCNNPoolingAverage (AvgPool2DGradCpu); its source image's
//    values are not read (Apple: any correctly sized image will do).
// Where Apple is silent or the fake does not go, what it chooses (flag for a Mac run):
//  * Gradients: the windows are placed from secondaryOffset as the forward's from its
//    offset (the window centre of output (0, 0) in the forward's source): the fake's
//    reading of Apple's (cut short) text, the main thing a Mac run must confirm.
//    primaryOffset other than 0, sourceSize other than the source gradient's size,
//    kernelOffsetX/Y != 0, zeroPadSizeX/Y != 0: not emulated. The gradient state is a
//    plain MPSNNGradientState from the forward's -resultStateForSourceImage:... and
//    carries nothing. Ties in a max window: Apple says the pick is "implementation
//    specific"; the fake takes the first in scan order (TF's), so tests cannot see a
//    different tie rule: the backend declines tied windows itself. N(x) of the average
//    gradient: the valid cells (as the Clamp forward); Apple's gradient kernel has no
//    documented edgeMode choosing between that and the full window.
//  * edgeMode Zero with a window reaching outside the source, a window entirely outside
//    (Apple: average gives 0), zeroPadSizeX/Y != 0, a negative pad (offset.x >
//    floor(kernelWidth/2)), offset.z != 0, a clip rectangle other than the whole
//    destination, different image counts or channel counts: not emulated (abort).
//  * NaN: MaxPool2DCpu propagates the first NaN of a window; what MPS's max does with NaN
//    is not documented.
//  * Ties: the forward value is the same whichever maximum is taken.
//  * Images: float32 feature channels only (the fake's limit, not Apple's).
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "emulation/metal/metal_emu.h"
#include "emulation/mps/mps_emu.h"
#include "emulation/runtime/objc_emu.h"
#include "ops/pool/pool.h"

// MPSCNNKernel's ivars, as mps_cnn.mm's @implementation declares them (see mps_cnn_norm.mm:
// the runtime checks the layout when it loads the classes).
@interface MPSCNNKernel () {
 @protected
  MPSOffset _offset;
  MPSImageEdgeMode _edgeMode;
}
@end

// MPSCNNGradientKernel's ivars, as mps_cnn.mm's @implementation declares them.
@interface MPSCNNGradientKernel () {
 @protected
  NSInteger _kernelOffsetX, _kernelOffsetY;
}
@end

namespace {

std::string S(int64_t v) { return std::to_string(v); }

void CheckFloatImage(const char* method, const char* name, MPSImage* image, id<MTLDevice> device) {
  EmuCheckFloatImage(method, name, image, device, "the fake pools float32 only");
}

const tfmps::ParallelFor kSerial = [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
  if (total > 0) fn(0, total);
};

// One dimension of the window geometry from MPS's terms: the windows start at
// o * stride - pad (pad = floor(k/2) - offset). Aborts unless every window holds a cell
// of the source (the fake's limit) and pad >= 0; *reaches_out: some window has cells
// outside the source.
void Dimension(const char* method, const char* axis, int64_t in, int64_t out, int64_t k, int64_t stride,
               int64_t offset, int64_t* pad_before, int64_t* pad_after, bool* reaches_out) {
  const int64_t pad = k / 2 - offset;
  if (pad < 0) {
    EmuValidationFailure(method, std::string("emulation limit: offset.") + axis + " = " + S(offset) +
                                     " starts the first window inside the source (kernel " + S(k) + ")");
  }
  const int64_t last_start = (out - 1) * stride - pad;
  if (pad >= k || last_start >= in) {
    EmuValidationFailure(method, std::string("emulation limit: a window lies entirely outside the source in ") +
                                     axis + " (Apple: the average is 0; not emulated)");
  }
  *pad_before = pad;
  *pad_after = std::max<int64_t>(0, last_start + k - in);
  *reaches_out = pad > 0 || *pad_after > 0;
}

}  // namespace

@implementation MPSCNNPooling {
 @protected
  NSUInteger _kernelWidth, _kernelHeight, _strideX, _strideY;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY {
  const char* method = "-[MPSCNNPooling initWithDevice:kernelWidth:kernelHeight:strideInPixelsX:strideInPixelsY:]";
  if (kernelWidth < 1 || kernelHeight < 1) EmuValidationFailure(method, "a kernel size is 0");
  if (strideInPixelsX < 1 || strideInPixelsY < 1) EmuValidationFailure(method, "a stride is 0");
  self = [super initEmuWithDevice:device];
  if (self == nil) return nil;
  _kernelWidth = kernelWidth;
  _kernelHeight = kernelHeight;
  _strideX = strideInPixelsX;
  _strideY = strideInPixelsY;
  _edgeMode = MPSImageEdgeModeZero;  // MPSCNNKernel's default
  return self;
}

- (NSUInteger)kernelWidth { return _kernelWidth; }
- (NSUInteger)kernelHeight { return _kernelHeight; }
- (NSUInteger)strideInPixelsX { return _strideX; }
- (NSUInteger)strideInPixelsY { return _strideY; }

// What the gradient kernels take: a plain MPSNNGradientState (the fake's gradients read
// nothing from it; their geometry is their own properties').
- (MPSState*)resultStateForSourceImage:(MPSImage*)sourceImage
                          sourceStates:(NSArray<MPSState*>*)sourceStates
                      destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSCNNPooling resultStateForSourceImage:sourceStates:destinationImage:]";
  if (sourceImage == nil || destinationImage == nil) EmuValidationFailure(method, "an image is nil");
  return [[MPSNNGradientState alloc] init];
}

// Subclasses: YES for max, NO for average.
- (BOOL)emuIsMax { return YES; }
- (BOOL)emuHasZeroPadding { return NO; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage {
  const std::string name = std::string("-[") + object_getClassName(self) +
                           " encodeToCommandBuffer:sourceImage:destinationImage:]";
  const char* method = name.c_str();
  if ([self class] == [MPSCNNPooling class]) EmuValidationFailure(method, "MPSCNNPooling is abstract");
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  CheckFloatImage(method, "sourceImage", sourceImage, [self device]);
  CheckFloatImage(method, "destinationImage", destinationImage, [self device]);
  if (sourceImage == destinationImage) EmuValidationFailure(method, "emulation check: source and destination are one image");
  if ([sourceImage featureChannels] != [destinationImage featureChannels] ||
      [sourceImage numberOfImages] != [destinationImage numberOfImages]) {
    EmuValidationFailure(method, "emulation limit: source and destination differ in channels or image count");
  }
  if (_offset.z != 0) EmuValidationFailure(method, "emulation limit: offset.z is not 0");
  if ([self emuHasZeroPadding]) EmuValidationFailure(method, "emulation limit: zeroPadSizeX/Y is not 0");
  tfmps::pool::Pool2DGeometry g;
  g.batch = [sourceImage numberOfImages];
  g.in_h = [sourceImage height];
  g.in_w = [sourceImage width];
  g.channels = [sourceImage featureChannels];
  g.k_h = static_cast<int64_t>(_kernelHeight);
  g.k_w = static_cast<int64_t>(_kernelWidth);
  g.stride_h = static_cast<int64_t>(_strideY);
  g.stride_w = static_cast<int64_t>(_strideX);
  g.out_h = [destinationImage height];
  g.out_w = [destinationImage width];
  bool out_h = false, out_w = false;
  Dimension(method, "y", g.in_h, g.out_h, g.k_h, g.stride_h, _offset.y, &g.pad_top, &g.pad_bottom, &out_h);
  Dimension(method, "x", g.in_w, g.out_w, g.k_w, g.stride_w, _offset.x, &g.pad_left, &g.pad_right, &out_w);
  if ((out_h || out_w) && _edgeMode != MPSImageEdgeModeClamp) {
    EmuValidationFailure(method, "emulation limit: windows reach outside the source with edgeMode Zero (not emulated)");
  }
  const bool is_max = [self emuIsMax];
  MPSImage* src = sourceImage;
  MPSImage* dst = destinationImage;
  [dst beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [g, is_max, src, dst] {
        const std::vector<float> x = EmuReadNhwc(src);
        std::vector<float> y(static_cast<size_t>(g.out_size()));
        if (is_max) {
          tfmps::pool::MaxPool2DCpu(g, x.data(), y.data(), kSerial);
        } else {
          tfmps::pool::AvgPool2DCpu(g, x.data(), y.data(), kSerial);
        }
        EmuWriteNhwc(dst, y);
      },
      [dst] { [dst endGpuWrite]; });
}

@end

@implementation MPSCNNPoolingMax

- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY {
  return [super initWithDevice:device
                   kernelWidth:kernelWidth
                  kernelHeight:kernelHeight
               strideInPixelsX:strideInPixelsX
               strideInPixelsY:strideInPixelsY];
}

@end

@implementation MPSCNNPoolingAverage {
  NSUInteger _zeroPadSizeX, _zeroPadSizeY;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY {
  return [super initWithDevice:device
                   kernelWidth:kernelWidth
                  kernelHeight:kernelHeight
               strideInPixelsX:strideInPixelsX
               strideInPixelsY:strideInPixelsY];
}

- (NSUInteger)zeroPadSizeX { return _zeroPadSizeX; }
- (void)setZeroPadSizeX:(NSUInteger)v { _zeroPadSizeX = v; }
- (NSUInteger)zeroPadSizeY { return _zeroPadSizeY; }
- (void)setZeroPadSizeY:(NSUInteger)v { _zeroPadSizeY = v; }
- (BOOL)emuIsMax { return NO; }
- (BOOL)emuHasZeroPadding { return _zeroPadSizeX != 0 || _zeroPadSizeY != 0; }

@end

// ------------------------------------------------------------------------ gradients
@implementation MPSCNNPoolingGradient {
 @protected
  NSUInteger _kernelWidth, _kernelHeight, _strideX, _strideY;
  MTLSize _sourceSize;
  MPSOffset _primaryOffset, _secondaryOffset;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY {
  const char* method =
      "-[MPSCNNPoolingGradient initWithDevice:kernelWidth:kernelHeight:strideInPixelsX:strideInPixelsY:]";
  if (kernelWidth < 1 || kernelHeight < 1) EmuValidationFailure(method, "a kernel size is 0");
  if (strideInPixelsX < 1 || strideInPixelsY < 1) EmuValidationFailure(method, "a stride is 0");
  self = [super initEmuWithDevice:device];
  if (self == nil) return nil;
  _kernelWidth = kernelWidth;
  _kernelHeight = kernelHeight;
  _strideX = strideInPixelsX;
  _strideY = strideInPixelsY;
  _sourceSize = MTLSizeMake(0, 0, 0);  // Apple does not state a default: the encode needs it set
  return self;
}

- (MTLSize)sourceSize { return _sourceSize; }
- (void)setSourceSize:(MTLSize)v { _sourceSize = v; }
- (MPSOffset)primaryOffset { return _primaryOffset; }
- (void)setPrimaryOffset:(MPSOffset)v { _primaryOffset = v; }
- (MPSOffset)secondaryOffset { return _secondaryOffset; }
- (void)setSecondaryOffset:(MPSOffset)v { _secondaryOffset = v; }
- (BOOL)emuIsMax { return YES; }
- (BOOL)emuHasZeroPadding { return NO; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
               sourceGradient:(MPSImage*)sourceGradient
                  sourceImage:(MPSImage*)sourceImage
                gradientState:(MPSState*)gradientState
          destinationGradient:(MPSImage*)destinationGradient {
  const std::string name = std::string("-[") + object_getClassName(self) +
                           " encodeToCommandBuffer:sourceGradient:sourceImage:gradientState:destinationGradient:]";
  const char* method = name.c_str();
  if ([self class] == [MPSCNNPoolingGradient class]) EmuValidationFailure(method, "MPSCNNPoolingGradient is abstract");
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  if (gradientState == nil || ![gradientState isKindOfClass:[MPSNNGradientState class]]) {
    EmuValidationFailure(method, "gradientState is nil or not the forward pooling's MPSNNGradientState");
  }
  CheckFloatImage(method, "sourceGradient", sourceGradient, [self device]);
  CheckFloatImage(method, "sourceImage", sourceImage, [self device]);
  CheckFloatImage(method, "destinationGradient", destinationGradient, [self device]);
  if (destinationGradient == sourceGradient || destinationGradient == sourceImage) {
    EmuValidationFailure(method, "emulation check: the destination is a source");
  }
  const NSUInteger C = [sourceImage featureChannels], N = [sourceImage numberOfImages];
  if ([sourceGradient featureChannels] != C || [destinationGradient featureChannels] != C ||
      [sourceGradient numberOfImages] != N || [destinationGradient numberOfImages] != N) {
    EmuValidationFailure(method, "emulation limit: the images differ in channels or image count");
  }
  if ([destinationGradient width] != [sourceImage width] || [destinationGradient height] != [sourceImage height]) {
    EmuValidationFailure(method, "emulation limit: destinationGradient is not the size of sourceImage");
  }
  if (_primaryOffset.x != 0 || _primaryOffset.y != 0 || _primaryOffset.z != 0 || _secondaryOffset.z != 0) {
    EmuValidationFailure(method, "emulation limit: primaryOffset is not 0 (the forward's clipRect origin), or "
                                 "secondaryOffset.z is not 0");
  }
  if (_sourceSize.width != [sourceGradient width] || _sourceSize.height != [sourceGradient height]) {
    EmuValidationFailure(method, "emulation limit: sourceSize (" + S(_sourceSize.width) + " x " +
                                     S(_sourceSize.height) + ") is not the source gradient's size (" +
                                     S([sourceGradient width]) + " x " + S([sourceGradient height]) + ")");
  }
  if (_kernelOffsetX != 0 || _kernelOffsetY != 0) {
    EmuValidationFailure(method, "emulation limit: kernelOffsetX/Y is not 0");
  }
  if ([self emuHasZeroPadding]) EmuValidationFailure(method, "emulation limit: zeroPadSizeX/Y is not 0");
  tfmps::pool::Pool2DGeometry g;
  g.batch = static_cast<int64_t>(N);
  g.in_h = [sourceImage height];
  g.in_w = [sourceImage width];
  g.channels = static_cast<int64_t>(C);
  g.k_h = static_cast<int64_t>(_kernelHeight);
  g.k_w = static_cast<int64_t>(_kernelWidth);
  g.stride_h = static_cast<int64_t>(_strideY);
  g.stride_w = static_cast<int64_t>(_strideX);
  g.out_h = [sourceGradient height];
  g.out_w = [sourceGradient width];
  bool out_h = false, out_w = false;
  Dimension(method, "y", g.in_h, g.out_h, g.k_h, g.stride_h, _secondaryOffset.y, &g.pad_top, &g.pad_bottom, &out_h);
  Dimension(method, "x", g.in_w, g.out_w, g.k_w, g.stride_w, _secondaryOffset.x, &g.pad_left, &g.pad_right, &out_w);
  const bool is_max = [self emuIsMax];
  MPSImage* dy_image = sourceGradient;
  MPSImage* x_image = sourceImage;
  MPSImage* dst = destinationGradient;
  [dst beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [g, is_max, dy_image, x_image, dst] {
        const std::vector<float> dy = EmuReadNhwc(dy_image);
        std::vector<float> dx(static_cast<size_t>(g.in_size()));
        if (is_max) {
          const std::vector<float> x = EmuReadNhwc(x_image);  // the arg-max, found again
          tfmps::pool::MaxPool2DGradCpu(g, x.data(), dy.data(), dx.data(), kSerial);
        } else {
          tfmps::pool::AvgPool2DGradCpu(g, dy.data(), dx.data(), kSerial);
        }
        EmuWriteNhwc(dst, dx);
      },
      [dst] { [dst endGpuWrite]; });
}

@end

@implementation MPSCNNPoolingMaxGradient

- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY {
  return [super initWithDevice:device
                   kernelWidth:kernelWidth
                  kernelHeight:kernelHeight
               strideInPixelsX:strideInPixelsX
               strideInPixelsY:strideInPixelsY];
}

@end

@implementation MPSCNNPoolingAverageGradient {
  NSUInteger _zeroPadSizeX, _zeroPadSizeY;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY {
  return [super initWithDevice:device
                   kernelWidth:kernelWidth
                  kernelHeight:kernelHeight
               strideInPixelsX:strideInPixelsX
               strideInPixelsY:strideInPixelsY];
}

- (NSUInteger)zeroPadSizeX { return _zeroPadSizeX; }
- (void)setZeroPadSizeX:(NSUInteger)v { _zeroPadSizeX = v; }
- (NSUInteger)zeroPadSizeY { return _zeroPadSizeY; }
- (void)setZeroPadSizeY:(NSUInteger)v { _zeroPadSizeY = v; }
- (BOOL)emuIsMax { return NO; }
- (BOOL)emuHasZeroPadding { return _zeroPadSizeX != 0 || _zeroPadSizeY != 0; }

@end
