// Metal backend of the conv family: MPSCNNConvolution (forward) and
// MPSCNNConvolutionGradient (input and filter gradients). Built with ARC. Nothing here
// has run on a Mac yet: it is type-checked against the project's declarations of Apple's
// API and executed on Linux against the Metal emulation (emulation/mps/mps_cnn.mm,
// docs/metal-emulation.md).
//
// One command buffer per call (the stream's, with a thread target):
//   NHWC buffer --MPSMatrixCopyToImage--> MPSImage --MPSCNNConvolution(Gradient)-->
//   MPSImage --MPSImageCopyToMatrix--> NHWC buffer
// An NHWC tensor of N images is an MPSMatrix of N rows of H*W*C floats over the tensor's
// own MTLBuffer (one image per row, MPSDataLayoutHeightxWidthxFeatureChannels), which is
// what the converters take (convert_metal.mm says what Apple documents of them). The
// images are GPU-private float32 texture arrays of N * ceil(C/4) slices.
//
// How TF's geometry maps onto MPS (conv.h; Apple's MPSCNNKernel.offset and
// MPSCNNConvolutionDescriptor.kernelWidth): MPS puts the left edge of output pixel x's
// window at offset.x + x*stride - (kernelWidth >> 1), TF at x*stride - pad_left, so
//   offset.x = (k_w >> 1) * dilation_w - pad_left,  offset.y likewise,  offset.z = 0,
// and the destination image is exactly [N, OH, OW, O]: the bottom/right padding is what
// edgeMode Zero reads past the source's edge, so asymmetric SAME and any explicit
// padding map exactly. With dilation the tap kx reads
// offset.x + x*stride + (kx - (k_w >> 1)) * dilation; Apple does not say where the taps
// of a dilated *even* kernel land, so that case is kUnsupported.
//
// What else returns kUnsupported, and why:
//  * groups > 1 with C/G or O/G not a multiple of 4 (MPSCNNConvolutionDescriptor.groups);
//    depthwise (G == C) maps to MPSCNNDepthWiseConvolutionDescriptor, which supports a
//    channel multiplier of 1 only: other multipliers are kUnsupported.
//  * images beyond Metal's texture limits (N * ceil(C/4) > 2048 array slices, or a side
//    > 16384), and negative pads (geometries that only backends build internally).
//  * accumulator_precision float16 (conv_metal.h).
//  * a pointer that is not in a registered, 16-byte aligned Metal buffer.
// accumulatorPrecisionOption is set to Float explicitly (Apple's pages do not state the
// default).
//
// Weights: MPSCNNConvolution copies them at -initWithDevice:weights:, from a data source
// over the TF filter (TFMPSConvDataSource below: -load repacks HWIO -> OHWI into memory
// it owns, -purge frees it). That read happens on the CPU at encode time, so with a
// device stream the call first waits for the stream's queued work (the filter may be an
// optimizer's output still in flight). The gradient state's gradientForWeights is OHWI
// in MPS-owned storage: it is blitted into a shared buffer, waited for, and repacked into
// the TF filter gradient on the CPU. Both waits are the cost of MPSCNN's CPU-side
// weights: docs/metal-emulation.md ("Convolution") says why MPSGraph, whose weights are
// GPU tensors, is the better choice for per-op kernels, and why this path stays.
//
// The gradients take their geometry from an MPSCNNConvolutionGradientState made by the
// forward kernel (-resultStateForSourceImage:sourceStates:destinationImage:) with the
// offset above, and kernelOffsetX/Y left at 0. BackpropInput has no forward input, so
// its sourceImage is an unwritten image of the input's size (GradientWithData reads only
// its size); BackpropFilter has no filter, so its data source gives zero weights, and
// its destinationGradient is an unwritten image MPS does not write (GradientWithWeights
// AndBias). To settle on a Mac: whether MPSCNNConvolutionGradient places its kernel from
// the state as assumed, and what storage the state's gradient buffers have.
//
// The transposed convolution (Conv2DTransposeMetal) runs on MPSCNNConvolutionTranspose,
// source = the op's input [N, OH, OW, O], destination = its output [N, H, W, C]. Apple
// (MPSCNNConvolution.h): a stride s puts s - 1 zeros between source pixels (the expanded
// image E, E[i*s] = source[i], zero elsewhere and outside), then "a convolution is done
// over the expanded image", with the weights as given (no rotation), starting at
// totalOffset = offset * stride + kernelOffset in E's frame. Reading that start as the
// position of the kernel's centre tap (K >> 1) for destination pixel 0, as
// MPSCNNConvolution's offset is (the fake's choice, flagged there for a Mac run):
//   dst[x] = sum_kx E[T + x - (K >> 1) + kx] * W[kx],   T = offset.x * s + kernelOffsetX.
// TF's transpose is the input gradient dx[h] = sum over i*s - pt + kh = h of dy[i] * w[kh]
// (dilation 1); with e = i*s = h + pt - kh, matching e = T + h - (K >> 1) + kx gives
// kx = pt - T + (K >> 1) - kh, the whole range 0..K-1 exactly when kx = K - 1 - kh:
//   W[c][kx][o] = w[K-1-kx][c][o]  (rotated 180 degrees, I and O swapped: conv_repack.h),
//   offset = 0,  kernelOffsetX = pad_left + (k_w >> 1) - (k_w - 1)  (Y likewise).
// (Were Apple's start the window's first tap instead of its centre, kernelOffsetX would
// be pad_left - (k_w - 1): to settle on a Mac, e.g. one impulse through a 1-channel
// 3x3 transpose.) The destination image is exactly [N, H, W, C]: edgeMode Zero supplies the zeros
// past E's edges, so every padding (SAME, VALID, EXPLICIT) and every output_shape the
// glue accepts maps. kUnsupported: dilation > 1 (Apple does not say how the transpose
// dilates), groups > 1 unless C/G and O/G are multiples of 4 (so depthwise), plus the
// limits above. The fused bias ([C], the destination's channels) and ReLU go through the
// data source and descriptor as for the forward convolution. The op's gradients are a
// forward convolution of dy (Conv2DForwardMetal) and a filter gradient
// (Conv2DBackpropFilterMetal): tf_mps/ops/conv.py calls those ops.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ops/common/metal_context.h"
#include "ops/conv/conv_metal.h"
#include "ops/conv/conv_repack.h"

// The weights of one convolution, over the TF filter (HWIO) or zeros (hwio NULL), and
// the TF bias or NULL; with transposeGroups > 0, MPSCNNConvolutionTranspose's weights for
// TF's conv2d_transpose of that filter (conv_repack.h's HwioToTransposeWeights). Apple's contract: -load before -weights/-biasTerms, each load
// balanced by a purge; what -weights returns stays valid until -purge.
@interface TFMPSConvDataSource : NSObject <MPSCNNConvolutionDataSource>
- (instancetype)initWithDescriptor:(MPSCNNConvolutionDescriptor*)descriptor
                             shape:(tfmps::conv::FilterShape)shape
                              hwio:(const float*)hwio
                              bias:(const float*)bias;
- (instancetype)initWithDescriptor:(MPSCNNConvolutionDescriptor*)descriptor
                             shape:(tfmps::conv::FilterShape)shape
                              hwio:(const float*)hwio
                              bias:(const float*)bias
                   transposeGroups:(int64_t)transposeGroups;
@end

@implementation TFMPSConvDataSource {
  MPSCNNConvolutionDescriptor* _descriptor;
  tfmps::conv::FilterShape _shape;
  const float* _hwio;
  const float* _bias;
  int64_t _transposeGroups;  // 0: a convolution's weights
  std::vector<float> _ohwi;  // filled by -load, freed by -purge
}

- (instancetype)initWithDescriptor:(MPSCNNConvolutionDescriptor*)descriptor
                             shape:(tfmps::conv::FilterShape)shape
                              hwio:(const float*)hwio
                              bias:(const float*)bias {
  return [self initWithDescriptor:descriptor shape:shape hwio:hwio bias:bias transposeGroups:0];
}

- (instancetype)initWithDescriptor:(MPSCNNConvolutionDescriptor*)descriptor
                             shape:(tfmps::conv::FilterShape)shape
                              hwio:(const float*)hwio
                              bias:(const float*)bias
                   transposeGroups:(int64_t)transposeGroups {
  self = [super init];
  if (self == nil) return nil;
  _descriptor = descriptor;
  _shape = shape;
  _hwio = hwio;
  _bias = bias;
  _transposeGroups = transposeGroups;
  return self;
}

- (MPSDataType)dataType {
  return MPSDataTypeFloat32;
}

- (MPSCNNConvolutionDescriptor*)descriptor {
  return _descriptor;
}

- (BOOL)load {
  _ohwi.assign(static_cast<size_t>(_shape.elements()), 0.0f);
  if (_hwio != nullptr && _transposeGroups > 0) {
    tfmps::conv::HwioToTransposeWeights(_shape, _transposeGroups, _hwio, _ohwi.data());
  } else if (_hwio != nullptr) {
    tfmps::conv::HwioToOhwi(_shape, _hwio, _ohwi.data());
  }
  return YES;
}

- (void)purge {
  std::vector<float>().swap(_ohwi);
}

- (void*)weights {
  return _ohwi.empty() ? nullptr : _ohwi.data();
}

// MPS reads, never writes, the bias terms.
- (float*)biasTerms {
  return const_cast<float*>(_bias);
}

- (NSString*)label {
  return @"tf-mps conv weights";
}

- (id)copyWithZone:(NSZone*)zone {
  return [[TFMPSConvDataSource alloc] initWithDescriptor:_descriptor
                                                   shape:_shape
                                                    hwio:_hwio
                                                    bias:_bias
                                         transposeGroups:_transposeGroups];
}

@end

namespace tfmps {
namespace conv {
namespace {

constexpr int64_t kMaxArraySlices = 2048;  // Metal: layers of a 2D texture array
constexpr int64_t kMaxTextureSide = 16384;

std::string Str(int64_t v) { return std::to_string(v); }

// MPS's depthwise descriptor, for G == C > 1 (one group of one channel is a plain
// convolution, whatever its output channels).
bool Depthwise(const Conv2DGeometry& g) { return g.groups > 1 && g.depthwise(); }

// What MPSCNN cannot do exactly, or "" (conv_metal.mm's header says why).
std::string Unsupported(const Conv2DGeometry& g, Accumulator acc) {
  if (acc == Accumulator::kFloat16) {
    return "accumulator_precision float16 (MPS ignores Half before A11; the emulation does not model it)";
  }
  if (g.pad_top < 0 || g.pad_bottom < 0 || g.pad_left < 0 || g.pad_right < 0) return "negative padding";
  if ((g.k_w % 2 == 0 && g.dilation_w > 1) || (g.k_h % 2 == 0 && g.dilation_h > 1)) {
    return "an even kernel with dilation > 1 (Apple does not document where its taps land)";
  }
  if (Depthwise(g)) {
    if (g.out_c_per_group != 1) {
      return "depthwise with channel multiplier " + Str(g.out_c_per_group) + " (MPS supports 1)";
    }
  } else if (g.groups > 1 && (g.in_c_per_group % 4 != 0 || g.out_c_per_group % 4 != 0)) {
    return "groups with " + Str(g.in_c_per_group) + " input / " + Str(g.out_c_per_group) +
           " output channels per group (MPS needs multiples of 4)";
  }
  const int64_t slices = g.batch * ((std::max(g.in_c, g.out_c) + 3) / 4);
  if (slices > kMaxArraySlices) {
    return "an image of " + Str(slices) + " texture slices (Metal's limit is " + Str(kMaxArraySlices) + ")";
  }
  for (int64_t side : {g.in_h, g.in_w, g.out_h, g.out_w}) {
    if (side > kMaxTextureSide) return "an image side of " + Str(side) + " (Metal's limit is 16384)";
  }
  return "";
}

FilterShape ShapeOf(const Conv2DGeometry& g) {
  FilterShape s;
  s.k_h = g.k_h;
  s.k_w = g.k_w;
  s.in_c_per_group = g.in_c_per_group;
  s.out_c = g.out_c;
  return s;
}

MPSCNNConvolutionDescriptor* DescriptorOf(const Conv2DGeometry& g, bool relu) {
  Class cls = Depthwise(g) ? [MPSCNNDepthWiseConvolutionDescriptor class] : [MPSCNNConvolutionDescriptor class];
  MPSCNNConvolutionDescriptor* d = [cls cnnConvolutionDescriptorWithKernelWidth:static_cast<NSUInteger>(g.k_w)
                                                                   kernelHeight:static_cast<NSUInteger>(g.k_h)
                                                           inputFeatureChannels:static_cast<NSUInteger>(g.in_c)
                                                          outputFeatureChannels:static_cast<NSUInteger>(g.out_c)];
  if (d == nil) return nil;
  d.strideInPixelsX = static_cast<NSUInteger>(g.stride_w);
  d.strideInPixelsY = static_cast<NSUInteger>(g.stride_h);
  d.dilationRateX = static_cast<NSUInteger>(g.dilation_w);
  d.dilationRateY = static_cast<NSUInteger>(g.dilation_h);
  d.groups = Depthwise(g) ? 1 : static_cast<NSUInteger>(g.groups);
  if (relu) d.fusedNeuronDescriptor = [MPSNNNeuronDescriptor cnnNeuronDescriptorWithType:MPSCNNNeuronTypeReLU a:0.0f];
  return d;
}

MPSOffset OffsetOf(const Conv2DGeometry& g) {
  MPSOffset o;
  o.x = static_cast<NSInteger>((g.k_w >> 1) * g.dilation_w - g.pad_left);
  o.y = static_cast<NSInteger>((g.k_h >> 1) * g.dilation_h - g.pad_top);
  o.z = 0;
  return o;
}

// The forward kernel over `source`'s weights, placed as TF places the window.
MPSCNNConvolution* MakeConvolution(const Conv2DGeometry& g, TFMPSConvDataSource* source) {
  MPSCNNConvolution* conv = [[MPSCNNConvolution alloc] initWithDevice:metal::Device() weights:source];
  if (conv == nil) return nil;
  conv.offset = OffsetOf(g);
  conv.edgeMode = MPSImageEdgeModeZero;
  conv.accumulatorPrecisionOption = MPSNNConvolutionAccumulatorPrecisionOptionFloat;
  return conv;
}

MPSImage* MakeImage(int64_t n, int64_t h, int64_t w, int64_t c) {
  MPSImageDescriptor* d =
      [MPSImageDescriptor imageDescriptorWithChannelFormat:MPSImageFeatureChannelFormatFloat32
                                                     width:static_cast<NSUInteger>(w)
                                                    height:static_cast<NSUInteger>(h)
                                           featureChannels:static_cast<NSUInteger>(c)
                                            numberOfImages:static_cast<NSUInteger>(n)
                                                     usage:MTLTextureUsageShaderRead | MTLTextureUsageShaderWrite];
  if (d == nil) return nil;
  d.storageMode = MTLStorageModePrivate;  // only the GPU touches these
  return [[MPSImage alloc] initWithDevice:metal::Device() imageDescriptor:d];
}

// An NHWC tensor as an MPSMatrix of n rows (images) of h*w*c floats over its buffer.
// nil with *found false: not in a registered aligned buffer; nil with *found true: MPS
// returned nil.
MPSMatrix* Rows(const void* p, int64_t n, int64_t h, int64_t w, int64_t c, bool* found) {
  const size_t row_bytes = static_cast<size_t>(h * w * c) * sizeof(float);
  const metal::BufferRef ref = metal::FindAlignedBuffer(p, static_cast<size_t>(n) * row_bytes);
  *found = ref.found();
  if (!ref.found()) return nil;
  MPSMatrixDescriptor* d = [MPSMatrixDescriptor matrixDescriptorWithRows:static_cast<NSUInteger>(n)
                                                                 columns:static_cast<NSUInteger>(h * w * c)
                                                                rowBytes:row_bytes
                                                                dataType:MPSDataTypeFloat32];
  if (d == nil) return nil;
  return [[MPSMatrix alloc] initWithBuffer:metal::BufferOf(ref) offset:ref.offset descriptor:d];
}

// The matrices and images of one call; Internal/Unsupported on the first failure.
struct Operands {
  std::string op;
  BackendStatus status = BackendStatus::Ok();

  MPSMatrix* Matrix(const char* name, const void* p, int64_t n, int64_t h, int64_t w, int64_t c) {
    if (!status.ok()) return nil;
    bool found = false;
    MPSMatrix* m = Rows(p, n, h, w, c, &found);
    if (!found) {
      status = BackendStatus::Unsupported(op + ": " + name + " is not in a 16-byte aligned, registered Metal buffer");
    } else if (m == nil) {
      status = BackendStatus::Internal(op + ": MPSMatrix initWithBuffer: returned nil for " + name);
    }
    return m;
  }
  MPSImage* Image(const char* name, int64_t n, int64_t h, int64_t w, int64_t c) {
    if (!status.ok()) return nil;
    MPSImage* image = MakeImage(n, h, w, c);
    if (image == nil) status = BackendStatus::Internal(op + ": MPSImage initWithDevice: returned nil for " + name);
    return image;
  }
  template <typename T>
  T* Kernel(T* kernel, const char* what) {
    if (status.ok() && kernel == nil) status = BackendStatus::Internal(op + ": " + what + " returned nil");
    return kernel;
  }
};

MPSMatrixCopyToImage* ToImage(Operands* ops) {
  return ops->Kernel([[MPSMatrixCopyToImage alloc] initWithDevice:metal::Device()
                                                       dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels],
                     "MPSMatrixCopyToImage initWithDevice:dataLayout:");
}

MPSImageCopyToMatrix* ToMatrix(Operands* ops) {
  return ops->Kernel([[MPSImageCopyToMatrix alloc] initWithDevice:metal::Device()
                                                       dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels],
                     "MPSImageCopyToMatrix initWithDevice:dataLayout:");
}

// The data sources read the filter and bias on the CPU: GPU work queued on this thread's
// stream that may still write them must be done first. Without a stream every call
// waited for its own work already.
BackendStatus WaitForStream(const std::string& op) {
  if (metal::ThreadTarget() == nullptr) return BackendStatus::Ok();
  return metal::SubmitAndWait(op, [](id<MTLCommandBuffer>) {});
}

// The checks every entry point starts with; "" or a status to return.
bool Precheck(const std::string& op, const Conv2DGeometry& g, Accumulator acc, BackendStatus* s) {
  if (!metal::Available()) {
    *s = BackendStatus::Unsupported(op + ": no Metal device");
    return false;
  }
  const std::string why = Unsupported(g, acc);
  if (!why.empty()) {
    *s = BackendStatus::Unsupported(op + ": " + why);
    return false;
  }
  return true;
}

}  // namespace

BackendStatus Conv2DForwardMetal(const Conv2DGeometry& g, const Conv2DForwardArgs& a, Accumulator acc) {
  const std::string op = "Conv2DForwardMetal";
  BackendStatus s;
  if (!Precheck(op, g, acc, &s)) return s;
  if (g.out_pixels() == 0) return BackendStatus::Ok();
  if (g.in_pixels() == 0) return BackendStatus::Unsupported(op + ": an empty input with a non-empty output");
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* x = ops.Matrix("input", a.input, g.batch, g.in_h, g.in_w, g.in_c);
    MPSMatrix* y = ops.Matrix("output", a.output, g.batch, g.out_h, g.out_w, g.out_c);
    MPSImage* xi = ops.Image("input", g.batch, g.in_h, g.in_w, g.in_c);
    MPSImage* yi = ops.Image("output", g.batch, g.out_h, g.out_w, g.out_c);
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
    if (!ops.status.ok()) return ops.status;
    s = WaitForStream(op);
    if (!s.ok()) return s;
    MPSCNNConvolutionDescriptor* d = DescriptorOf(g, a.activation == Activation::kRelu);
    if (d == nil) return BackendStatus::Internal(op + ": MPSCNNConvolutionDescriptor returned nil");
    TFMPSConvDataSource* weights = [[TFMPSConvDataSource alloc] initWithDescriptor:d
                                                                             shape:ShapeOf(g)
                                                                              hwio:a.filter
                                                                              bias:a.bias];
    MPSCNNConvolution* conv = MakeConvolution(g, weights);
    if (conv == nil) return BackendStatus::Internal(op + ": MPSCNNConvolution initWithDevice:weights: returned nil");
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      [to_image encodeToCommandBuffer:cb sourceMatrix:x destinationImage:xi];
      [conv encodeToCommandBuffer:cb sourceImage:xi destinationImage:yi];
      [to_matrix encodeToCommandBuffer:cb sourceImage:yi destinationMatrix:y];
    });
  }
}

BackendStatus Conv2DBackpropInputMetal(const Conv2DGeometry& g, const Conv2DBackpropInputArgs& a, Accumulator acc) {
  const std::string op = "Conv2DBackpropInputMetal";
  BackendStatus s;
  if (!Precheck(op, g, acc, &s)) return s;
  if (g.in_pixels() == 0) return BackendStatus::Ok();
  // (A valid geometry has output pixels whenever it has input pixels; the CPU backend
  // handles anything else.)
  if (g.out_pixels() == 0) return BackendStatus::Unsupported(op + ": no output pixels");
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* dy = ops.Matrix("out_backprop", a.out_backprop, g.batch, g.out_h, g.out_w, g.out_c);
    MPSMatrix* dx = ops.Matrix("input_backprop", a.input_backprop, g.batch, g.in_h, g.in_w, g.in_c);
    MPSImage* dyi = ops.Image("out_backprop", g.batch, g.out_h, g.out_w, g.out_c);
    MPSImage* dxi = ops.Image("input_backprop", g.batch, g.in_h, g.in_w, g.in_c);
    // The forward's source: only its size matters to GradientWithData.
    MPSImage* xi = ops.Image("input (size only)", g.batch, g.in_h, g.in_w, g.in_c);
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
    if (!ops.status.ok()) return ops.status;
    s = WaitForStream(op);
    if (!s.ok()) return s;
    MPSCNNConvolutionDescriptor* d = DescriptorOf(g, /*relu=*/false);
    if (d == nil) return BackendStatus::Internal(op + ": MPSCNNConvolutionDescriptor returned nil");
    TFMPSConvDataSource* weights = [[TFMPSConvDataSource alloc] initWithDescriptor:d
                                                                             shape:ShapeOf(g)
                                                                              hwio:a.filter
                                                                              bias:nullptr];
    MPSCNNConvolution* conv = MakeConvolution(g, weights);
    if (conv == nil) return BackendStatus::Internal(op + ": MPSCNNConvolution initWithDevice:weights: returned nil");
    MPSCNNConvolutionGradient* grad = [[MPSCNNConvolutionGradient alloc] initWithDevice:metal::Device()
                                                                                weights:weights];
    if (grad == nil) {
      return BackendStatus::Internal(op + ": MPSCNNConvolutionGradient initWithDevice:weights: returned nil");
    }
    grad.gradientOption = MPSCNNConvolutionGradientOptionGradientWithData;
    MPSCNNConvolutionGradientState* state = [conv resultStateForSourceImage:xi sourceStates:nil destinationImage:dyi];
    if (state == nil) return BackendStatus::Internal(op + ": resultStateForSourceImage: returned nil");
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      [to_image encodeToCommandBuffer:cb sourceMatrix:dy destinationImage:dyi];
      [grad encodeToCommandBuffer:cb sourceGradient:dyi sourceImage:xi gradientState:state destinationGradient:dxi];
      [to_matrix encodeToCommandBuffer:cb sourceImage:dxi destinationMatrix:dx];
    });
  }
}

BackendStatus Conv2DBackpropFilterMetal(const Conv2DGeometry& g, const Conv2DBackpropFilterArgs& a,
                                        Accumulator acc) {
  const std::string op = "Conv2DBackpropFilterMetal";
  BackendStatus s;
  if (!Precheck(op, g, acc, &s)) return s;
  const FilterShape shape = ShapeOf(g);
  const size_t w_bytes = static_cast<size_t>(shape.elements()) * sizeof(float);
  const size_t b_bytes = static_cast<size_t>(g.out_c) * sizeof(float);
  if (g.out_pixels() == 0 || g.in_pixels() == 0) {  // empty sums (or sums of zeros)
    s = WaitForStream(op);
    if (!s.ok()) return s;
    std::memset(a.filter_backprop, 0, w_bytes);
    if (a.bias_backprop != nullptr) std::memset(a.bias_backprop, 0, b_bytes);
    return BackendStatus::Ok();
  }
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* x = ops.Matrix("input", a.input, g.batch, g.in_h, g.in_w, g.in_c);
    MPSMatrix* dy = ops.Matrix("out_backprop", a.out_backprop, g.batch, g.out_h, g.out_w, g.out_c);
    MPSImage* xi = ops.Image("input", g.batch, g.in_h, g.in_w, g.in_c);
    MPSImage* dyi = ops.Image("out_backprop", g.batch, g.out_h, g.out_w, g.out_c);
    // Not written with GradientWithWeightsAndBias, but the encode call takes one.
    MPSImage* dxi = ops.Image("input gradient (unused)", g.batch, g.in_h, g.in_w, g.in_c);
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    if (!ops.status.ok()) return ops.status;
    id<MTLBuffer> staged_w = [metal::Device() newBufferWithLength:w_bytes options:MTLResourceStorageModeShared];
    id<MTLBuffer> staged_b = a.bias_backprop == nullptr
                                 ? nil
                                 : [metal::Device() newBufferWithLength:b_bytes options:MTLResourceStorageModeShared];
    if (staged_w == nil || (a.bias_backprop != nullptr && staged_b == nil)) {
      return BackendStatus::Internal(op + ": newBufferWithLength: returned nil");
    }
    // Zero weights: the gradient w.r.t. weights and biases does not read them.
    MPSCNNConvolutionDescriptor* d = DescriptorOf(g, /*relu=*/false);
    if (d == nil) return BackendStatus::Internal(op + ": MPSCNNConvolutionDescriptor returned nil");
    TFMPSConvDataSource* weights = [[TFMPSConvDataSource alloc] initWithDescriptor:d
                                                                             shape:shape
                                                                              hwio:nullptr
                                                                              bias:nullptr];
    MPSCNNConvolution* conv = MakeConvolution(g, weights);
    if (conv == nil) return BackendStatus::Internal(op + ": MPSCNNConvolution initWithDevice:weights: returned nil");
    MPSCNNConvolutionGradient* grad = [[MPSCNNConvolutionGradient alloc] initWithDevice:metal::Device()
                                                                                weights:weights];
    if (grad == nil) {
      return BackendStatus::Internal(op + ": MPSCNNConvolutionGradient initWithDevice:weights: returned nil");
    }
    grad.gradientOption = MPSCNNConvolutionGradientOptionGradientWithWeightsAndBias;
    MPSCNNConvolutionGradientState* state = [conv resultStateForSourceImage:xi sourceStates:nil destinationImage:dyi];
    if (state == nil) return BackendStatus::Internal(op + ": resultStateForSourceImage: returned nil");
    id<MTLBuffer> dw = state.gradientForWeights;
    id<MTLBuffer> db = state.gradientForBiases;
    if (dw == nil || [dw length] < w_bytes || (a.bias_backprop != nullptr && (db == nil || [db length] < b_bytes))) {
      return BackendStatus::Internal(op + ": the gradient state has no gradient buffer of the filter's size");
    }
    // The host reads the result right after: SubmitAndWait.
    s = metal::SubmitAndWait(op, [&](id<MTLCommandBuffer> cb) {
      [to_image encodeToCommandBuffer:cb sourceMatrix:x destinationImage:xi];
      [to_image encodeToCommandBuffer:cb sourceMatrix:dy destinationImage:dyi];
      [grad encodeToCommandBuffer:cb sourceGradient:dyi sourceImage:xi gradientState:state destinationGradient:dxi];
      id<MTLBlitCommandEncoder> blit = [cb blitCommandEncoder];
      [blit copyFromBuffer:dw sourceOffset:0 toBuffer:staged_w destinationOffset:0 size:w_bytes];
      if (staged_b != nil) [blit copyFromBuffer:db sourceOffset:0 toBuffer:staged_b destinationOffset:0 size:b_bytes];
      [blit endEncoding];
    });
    if (!s.ok()) return s;
    OhwiToHwio(shape, static_cast<const float*>([staged_w contents]), a.filter_backprop);
    if (staged_b != nil) std::memcpy(a.bias_backprop, [staged_b contents], b_bytes);
    return BackendStatus::Ok();
  }
}

BackendStatus Conv2DTransposeMetal(const Conv2DGeometry& g, const Conv2DTransposeArgs& a, Accumulator acc) {
  const std::string op = "Conv2DTransposeMetal";
  BackendStatus s;
  if (!Precheck(op, g, acc, &s)) return s;
  if (g.dilation_h > 1 || g.dilation_w > 1) {
    return BackendStatus::Unsupported(op + ": dilation > 1 (Apple does not document how the transpose dilates)");
  }
  if (g.groups > 1 && (g.in_c_per_group % 4 != 0 || g.out_c_per_group % 4 != 0)) {
    return BackendStatus::Unsupported(op + ": groups with " + Str(g.in_c_per_group) + " output / " +
                                      Str(g.out_c_per_group) +
                                      " input channels per group (MPS needs multiples of 4)");
  }
  if (g.in_pixels() == 0) return BackendStatus::Ok();
  // An empty source with a non-empty destination is act(bias): the CPU backend's.
  if (g.out_pixels() == 0) return BackendStatus::Unsupported(op + ": an empty input with a non-empty output");
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* x = ops.Matrix("input", a.input, g.batch, g.out_h, g.out_w, g.out_c);
    MPSMatrix* y = ops.Matrix("output", a.output, g.batch, g.in_h, g.in_w, g.in_c);
    MPSImage* xi = ops.Image("input", g.batch, g.out_h, g.out_w, g.out_c);
    MPSImage* yi = ops.Image("output", g.batch, g.in_h, g.in_w, g.in_c);
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
    if (!ops.status.ok()) return ops.status;
    s = WaitForStream(op);
    if (!s.ok()) return s;
    // Source channels O, destination channels C.
    MPSCNNConvolutionDescriptor* d =
        [MPSCNNConvolutionDescriptor cnnConvolutionDescriptorWithKernelWidth:static_cast<NSUInteger>(g.k_w)
                                                                kernelHeight:static_cast<NSUInteger>(g.k_h)
                                                        inputFeatureChannels:static_cast<NSUInteger>(g.out_c)
                                                       outputFeatureChannels:static_cast<NSUInteger>(g.in_c)];
    if (d == nil) return BackendStatus::Internal(op + ": MPSCNNConvolutionDescriptor returned nil");
    d.strideInPixelsX = static_cast<NSUInteger>(g.stride_w);
    d.strideInPixelsY = static_cast<NSUInteger>(g.stride_h);
    d.groups = static_cast<NSUInteger>(g.groups);
    if (a.activation == Activation::kRelu) {
      d.fusedNeuronDescriptor = [MPSNNNeuronDescriptor cnnNeuronDescriptorWithType:MPSCNNNeuronTypeReLU a:0.0f];
    }
    TFMPSConvDataSource* weights = [[TFMPSConvDataSource alloc] initWithDescriptor:d
                                                                             shape:ShapeOf(g)
                                                                              hwio:a.filter
                                                                              bias:a.bias
                                                                   transposeGroups:g.groups];
    MPSCNNConvolutionTranspose* tr = [[MPSCNNConvolutionTranspose alloc] initWithDevice:metal::Device()
                                                                                weights:weights];
    if (tr == nil) {
      return BackendStatus::Internal(op + ": MPSCNNConvolutionTranspose initWithDevice:weights: returned nil");
    }
    MPSOffset zero;
    zero.x = 0;
    zero.y = 0;
    zero.z = 0;
    tr.offset = zero;
    tr.kernelOffsetX = static_cast<NSInteger>(g.pad_left + (g.k_w >> 1) - (g.k_w - 1));
    tr.kernelOffsetY = static_cast<NSInteger>(g.pad_top + (g.k_h >> 1) - (g.k_h - 1));
    tr.edgeMode = MPSImageEdgeModeZero;
    tr.accumulatorPrecisionOption = MPSNNConvolutionAccumulatorPrecisionOptionFloat;
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      [to_image encodeToCommandBuffer:cb sourceMatrix:x destinationImage:xi];
      [tr encodeToCommandBuffer:cb sourceImage:xi destinationImage:yi];
      [to_matrix encodeToCommandBuffer:cb sourceImage:yi destinationMatrix:y];
    });
  }
}

}  // namespace conv
}  // namespace tfmps
