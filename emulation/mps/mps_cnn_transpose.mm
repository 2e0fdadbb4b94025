// CPU fakes of MPS's MPSCNNConvolution.h: MPSCNNConvolutionTranspose.
// Linux emulation only; built with ARC. They compute with the CPU backend.
//
// What Apple documents (MPSCNNConvolution.h, MPSCNNConvolutionTranspose(3)), and what the
// fake does with it:
//  * -initWithDevice:weights: reads the MPSCNNConvolutionDataSource as MPSCNNConvolution
//    does (mps_cnn.mm): -load (NO: nil), -descriptor, -dataType (Apple: "Currently we
//    support only Float32 weights"), -weights, -biasTerms, -purge. The descriptor's
//    inputFeatureChannels are the source's, outputFeatureChannels the destination's; the
//    weights are [outputFeatureChannels][kernelHeight][kernelWidth][inputFeatureChannels
//    / groups] (the data source protocol's layout) and the bias [outputFeatureChannels].
//  * "MPS uses the weights specified by the developer as-is and does not perform any
//    rotation."
//  * A stride s puts s - 1 zeros between source pixels: the expanded image E of
//    (srcSize - 1) * s + 1 pixels, E[i * s] = source[i]; "then a convolution is done over
//    the expanded image".
//  * "totalOffset = Offset * stride + kernelOffset", in E's frame (offset: MPSCNNKernel's,
//    in source pixels; kernelOffsetX/Y: "Offset in X from which the kernel starts
//    sliding"); the example with offset 2 puts the start on source pixel 2, i.e. E[4].
//  * accumulatorPrecisionOption: "Default is MPSNNConvolutionAccumulatorPrecisionOptionFloat"
//    (unlike MPSCNNConvolution's pages, the transpose's header states it): the fake
//    starts at Float; Half aborts (the fake sums in float32 only).
// Where Apple is silent, what the fake chooses (flag for a Mac run):
//  * What "where the convolution transpose begins" places: the fake reads it as the
//    position in E of the kernel's centre tap (kernelWidth >> 1) for destination pixel 0,
//    as MPSCNNConvolution's offset places its centre:
//      dst[x] = bias + sum_{kx, c} E[T + x - (kernelWidth >> 1) + kx][c] * W[o][kx][c]
//    (T = offset.x * strideInPixelsX + kernelOffsetX; rows likewise), reads outside E
//    being 0 (edgeMode Zero; other edge modes abort). The other reading, T as the
//    window's first tap, would shift every destination by kernelWidth >> 1 (odd and even
//    kernels alike): a Mac run with one impulse tells them apart. The destination's size
//    is the caller's (the stateless encode; no padding policy runs).
//  * Dilation rates other than 1 are not emulated (abort: Apple does not say how the
//    transpose dilates). groups as MPSCNNConvolutionDescriptor documents them (divisible,
//    multiples of 4 per group when > 1); a depthwise descriptor aborts.
//  * fusedNeuronDescriptor: none, or ReLU with a = 0, applied after the bias.
//  * Images: float32 feature channels only; the destination's numberOfImages images,
//    from source image offset.z.
// The math: E, shifted and bordered so that the window of destination pixel x starts at
// its column x, is convolved by the CPU backend's forward convolution (VALID, stride 1)
// with the weights as given (relaid out OHWI -> HWIO by this file's own loop).
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
#include "ops/conv/conv.h"

// MPSCNNKernel's ivars, as mps_cnn.mm's @implementation declares them (mps_cnn_norm.mm
// says why a subclass in another file mirrors them; the runtime checks the layout).
@interface MPSCNNKernel () {
 @protected
  MPSOffset _offset;
  MPSImageEdgeMode _edgeMode;
}
@end

namespace {

std::string S(int64_t v) { return std::to_string(v); }

struct TransposeParams {
  int64_t k_w = 0, k_h = 0, in_c = 0, out_c = 0, stride_x = 1, stride_y = 1, groups = 1;
  bool relu = false;
  std::vector<float> weights;  // [out_c][k_h][k_w][in_c / groups]
  std::vector<float> bias;     // [out_c] or empty
  int64_t cg() const { return in_c / groups; }
};

bool Load(const char* method, id<MPSCNNConvolutionDataSource> ds, TransposeParams* p) {
  if (![ds load]) return false;
  MPSCNNConvolutionDescriptor* d = [ds descriptor];
  if (d == nil) EmuValidationFailure(method, "the data source's descriptor is nil");
  if ([d isKindOfClass:[MPSCNNDepthWiseConvolutionDescriptor class]]) {
    EmuValidationFailure(method, "emulation limit: a depthwise descriptor for a convolution transpose");
  }
  p->k_w = static_cast<int64_t>([d kernelWidth]);
  p->k_h = static_cast<int64_t>([d kernelHeight]);
  p->in_c = static_cast<int64_t>([d inputFeatureChannels]);
  p->out_c = static_cast<int64_t>([d outputFeatureChannels]);
  p->stride_x = static_cast<int64_t>([d strideInPixelsX]);
  p->stride_y = static_cast<int64_t>([d strideInPixelsY]);
  p->groups = static_cast<int64_t>([d groups]);
  if (p->k_w < 1 || p->k_h < 1 || p->in_c < 1 || p->out_c < 1 || p->stride_x < 1 || p->stride_y < 1 ||
      p->groups < 1) {
    EmuValidationFailure(method, "descriptor: kernel sizes, feature channels, strides and groups must be >= 1");
  }
  if ([d dilationRateX] != 1 || [d dilationRateY] != 1) {
    EmuValidationFailure(method, "emulation limit: a dilation rate other than 1 (Apple does not say how the "
                                 "transpose dilates)");
  }
  if (p->in_c % p->groups != 0 || p->out_c % p->groups != 0) {
    EmuValidationFailure(method, "inputFeatureChannels (" + S(p->in_c) + ") and outputFeatureChannels (" +
                                     S(p->out_c) + ") must be divisible by groups (" + S(p->groups) + ")");
  }
  if (p->groups > 1 && ((p->in_c / p->groups) % 4 != 0 || (p->out_c / p->groups) % 4 != 0)) {
    EmuValidationFailure(method, "with groups > 1 the channels of each group must be a multiple of 4");
  }
  MPSNNNeuronDescriptor* neuron = [d fusedNeuronDescriptor];
  if (neuron != nil && [neuron neuronType] != MPSCNNNeuronTypeNone) {
    if ([neuron neuronType] != MPSCNNNeuronTypeReLU || [neuron a] != 0.0f) {
      EmuValidationFailure(method, "emulation limit: the fused neuron is not ReLU with a = 0");
    }
    p->relu = true;
  }
  if ([ds dataType] != MPSDataTypeFloat32) {
    EmuValidationFailure(method, "MPSCNNConvolutionTranspose supports only Float32 weights (Apple), got " +
                                     std::string(EmuDataTypeName([ds dataType])));
  }
  const float* w = static_cast<const float*>([ds weights]);
  if (w == nullptr) EmuValidationFailure(method, "the data source's weights are NULL");
  p->weights.assign(w, w + p->out_c * p->k_h * p->k_w * p->cg());
  const float* b = [ds biasTerms];
  if (b != nullptr) p->bias.assign(b, b + p->out_c);
  [ds purge];
  return true;
}

void CheckFloatImage(const char* method, const char* name, MPSImage* image, id<MTLDevice> device) {
  if (image == nil) EmuValidationFailure(method, std::string(name) + " is nil");
  if ([image device] != device) EmuValidationFailure(method, std::string(name) + " is on another device");
  if ([image featureChannelFormat] != MPSImageFeatureChannelFormatFloat32) {
    EmuValidationFailure(method, std::string("emulation limit: ") + name + " is not a float32 image");
  }
}

// What one encode computes, fixed at encode time.
struct Work {
  tfmps::conv::Conv2DGeometry g;  // the CPU backend's VALID stride-1 convolution of the bordered E
  int64_t first = 0;              // first source image
  int64_t src_h = 0, src_w = 0;
  int64_t sy = 1, sx = 1;
  int64_t top = 0, left = 0;      // bordered row/column 0 is E's row/column top/left
  std::vector<float> hwio;
  std::vector<float> bias;
  bool relu = false;
};

void Run(const Work& k, MPSImage* src, MPSImage* dst) {
  const tfmps::conv::Conv2DGeometry& g = k.g;
  const int64_t C = g.in_c, PH = g.in_h, PW = g.in_w;
  std::vector<float> padded(static_cast<size_t>(g.batch * PH * PW * C), 0.0f);
  const uint8_t* bytes = [src gpuBytes];
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t r = 0; r < PH; ++r) {
      const int64_t ey = k.top + r;
      if (ey < 0 || ey % k.sy != 0 || ey / k.sy >= k.src_h) continue;
      for (int64_t q = 0; q < PW; ++q) {
        const int64_t ex = k.left + q;
        if (ex < 0 || ex % k.sx != 0 || ex / k.sx >= k.src_w) continue;
        for (int64_t c = 0; c < C; ++c) {
          std::memcpy(&padded[((n * PH + r) * PW + q) * C + c],
                      bytes + [src indexOfImage:k.first + n channel:c row:ey / k.sy column:ex / k.sx] * sizeof(float),
                      sizeof(float));
        }
      }
    }
  std::vector<float> y(static_cast<size_t>(g.out_pixels() * g.out_c));
  std::vector<float> workspace(static_cast<size_t>(std::max<int64_t>(1, tfmps::conv::Conv2DForwardCpuWorkspace(g, 1))));
  tfmps::conv::CpuContext cpu;
  cpu.parallel = [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    if (total > 0) fn(0, total);
  };
  cpu.threads = 1;
  cpu.workspace = workspace.data();
  cpu.workspace_size = static_cast<int64_t>(workspace.size());
  const tfmps::conv::Conv2DForwardArgs a{padded.data(), k.hwio.data(), k.bias.empty() ? nullptr : k.bias.data(),
                                         k.relu ? tfmps::conv::Activation::kRelu : tfmps::conv::Activation::kNone,
                                         y.data()};
  tfmps::conv::Conv2DForwardCpu(g, a, cpu);
  uint8_t* out = [dst gpuBytes];
  const int64_t H = g.out_h, W = g.out_w, O = g.out_c;
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        for (int64_t o = 0; o < O; ++o)
          std::memcpy(out + [dst indexOfImage:n channel:o row:h column:w] * sizeof(float),
                      &y[((n * H + h) * W + w) * O + o], sizeof(float));
        for (int64_t o = O; o % 4 != 0; ++o)
          std::memset(out + [dst indexOfImage:n channel:o row:h column:w] * sizeof(float), 0, sizeof(float));
      }
}

}  // namespace

@implementation MPSCNNConvolutionTranspose {
  TransposeParams _p;
  NSInteger _kernelOffsetX, _kernelOffsetY;
  MPSNNConvolutionAccumulatorPrecisionOption _accumulatorPrecisionOption;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device weights:(id<MPSCNNConvolutionDataSource>)weights {
  const char* method = "-[MPSCNNConvolutionTranspose initWithDevice:weights:]";
  if (weights == nil) EmuValidationFailure(method, "weights (the data source) is nil");
  self = [super initEmuWithDevice:device];
  if (self == nil) return nil;
  if (!Load(method, weights, &_p)) return nil;
  _accumulatorPrecisionOption = MPSNNConvolutionAccumulatorPrecisionOptionFloat;  // Apple's stated default
  _edgeMode = MPSImageEdgeModeZero;
  return self;
}

- (NSUInteger)kernelWidth { return static_cast<NSUInteger>(_p.k_w); }
- (NSUInteger)kernelHeight { return static_cast<NSUInteger>(_p.k_h); }
- (NSUInteger)strideInPixelsX { return static_cast<NSUInteger>(_p.stride_x); }
- (NSUInteger)strideInPixelsY { return static_cast<NSUInteger>(_p.stride_y); }
- (NSUInteger)inputFeatureChannels { return static_cast<NSUInteger>(_p.in_c); }
- (NSUInteger)outputFeatureChannels { return static_cast<NSUInteger>(_p.out_c); }
- (NSUInteger)groups { return static_cast<NSUInteger>(_p.groups); }
- (NSInteger)kernelOffsetX { return _kernelOffsetX; }
- (void)setKernelOffsetX:(NSInteger)v { _kernelOffsetX = v; }
- (NSInteger)kernelOffsetY { return _kernelOffsetY; }
- (void)setKernelOffsetY:(NSInteger)v { _kernelOffsetY = v; }
- (MPSNNConvolutionAccumulatorPrecisionOption)accumulatorPrecisionOption { return _accumulatorPrecisionOption; }
- (void)setAccumulatorPrecisionOption:(MPSNNConvolutionAccumulatorPrecisionOption)v {
  _accumulatorPrecisionOption = v;
}

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSCNNConvolutionTranspose encodeToCommandBuffer:sourceImage:destinationImage:]";
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  CheckFloatImage(method, "sourceImage", sourceImage, [self device]);
  CheckFloatImage(method, "destinationImage", destinationImage, [self device]);
  if (sourceImage == destinationImage) EmuValidationFailure(method, "emulation check: the source and destination are one image");
  if (static_cast<int64_t>([sourceImage featureChannels]) != _p.in_c) {
    EmuValidationFailure(method, "sourceImage has " + S([sourceImage featureChannels]) +
                                     " feature channels; inputFeatureChannels is " + S(_p.in_c));
  }
  if (static_cast<int64_t>([destinationImage featureChannels]) != _p.out_c) {
    EmuValidationFailure(method, "destinationImage has " + S([destinationImage featureChannels]) +
                                     " feature channels; outputFeatureChannels is " + S(_p.out_c));
  }
  if (_edgeMode != MPSImageEdgeModeZero) EmuValidationFailure(method, "emulation limit: edgeMode other than Zero");
  if (_accumulatorPrecisionOption != MPSNNConvolutionAccumulatorPrecisionOptionFloat) {
    EmuValidationFailure(method, "emulation limit: accumulatorPrecisionOption Half (the fake sums in float32 only)");
  }
  const int64_t batch = static_cast<int64_t>([destinationImage numberOfImages]);
  if (_offset.z < 0 || static_cast<int64_t>([sourceImage numberOfImages]) < _offset.z + batch) {
    EmuValidationFailure(method, "offset.z (" + S(_offset.z) + ") + the destination's " + S(batch) +
                                     " images exceed the source's " + S([sourceImage numberOfImages]) + " images");
  }
  Work k;
  k.first = _offset.z;
  k.src_h = static_cast<int64_t>([sourceImage height]);
  k.src_w = static_cast<int64_t>([sourceImage width]);
  k.sy = _p.stride_y;
  k.sx = _p.stride_x;
  // The window of destination pixel x starts at E column T + x - (k_w >> 1).
  k.left = _offset.x * _p.stride_x + _kernelOffsetX - (_p.k_w >> 1);
  k.top = _offset.y * _p.stride_y + _kernelOffsetY - (_p.k_h >> 1);
  tfmps::conv::Conv2DGeometry& g = k.g;
  g = {};
  g.batch = batch;
  g.out_h = static_cast<int64_t>([destinationImage height]);
  g.out_w = static_cast<int64_t>([destinationImage width]);
  g.in_h = g.out_h + _p.k_h - 1;
  g.in_w = g.out_w + _p.k_w - 1;
  g.in_c = _p.in_c;
  g.k_h = _p.k_h;
  g.k_w = _p.k_w;
  g.out_c = _p.out_c;
  g.groups = _p.groups;
  g.in_c_per_group = _p.cg();
  g.out_c_per_group = _p.out_c / _p.groups;
  g.stride_h = g.stride_w = g.dilation_h = g.dilation_w = 1;
  // OHWI [O][KH][KW][Cg] -> HWIO [KH][KW][Cg][O], as given (no rotation).
  const int64_t cg = _p.cg();
  k.hwio.resize(_p.weights.size());
  for (int64_t o = 0; o < _p.out_c; ++o)
    for (int64_t kh = 0; kh < _p.k_h; ++kh)
      for (int64_t kw = 0; kw < _p.k_w; ++kw)
        for (int64_t c = 0; c < cg; ++c)
          k.hwio[((kh * _p.k_w + kw) * cg + c) * _p.out_c + o] = _p.weights[((o * _p.k_h + kh) * _p.k_w + kw) * cg + c];
  k.bias = _p.bias;
  k.relu = _p.relu;
  MPSImage* src = sourceImage;
  MPSImage* dst = destinationImage;
  [dst beginGpuWrite];
  EmuEncode(commandBuffer, method, [k, src, dst] { Run(k, src, dst); }, [dst] { [dst endGpuWrite]; });
}

@end
