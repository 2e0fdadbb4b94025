// CPU fakes of MPS's CNN convolution (MPSNeuralNetwork: MPSCNNKernel.h,
// MPSCNNConvolution.h, MPSCNNNeuron.h, MPSState.h): the neuron and convolution
// descriptors, MPSCNNConvolution, its gradient state and MPSCNNConvolutionGradient.
// Linux emulation only; built with ARC.
//
// What Apple documents, and what the fake does with it:
//  * The weights come from an MPSCNNConvolutionDataSource, read by the initializer:
//    -load (NO: the initializer returns nil), -descriptor, -dataType, -weights
//    ([O][KH][KW][Cg]), -biasTerms ([O] or NULL), then -purge, so every load is balanced.
//    The kernel keeps a copy (MPS copies the weights into its own buffers).
//  * Window placement (MPSCNNConvolutionDescriptor.kernelWidth): "The position of the
//    left edge of the kernel window is given by offset.x - (kernelWidth>>1)"; offset is
//    clipRect.origin in source coordinates, and output pixel x reads from
//    offset.x + x * strideInPixelsX. With dilation, tap kx reads
//    offset.x + x*stride + (kx - (kernelWidth>>1)) * dilationRateX: Apple does not say
//    where dilated taps of an even kernel land (odd kernels agree with the undilated
//    rule either way), so conv_metal.mm declines even kernels with dilation > 1.
//  * edgeMode Zero (MPSCNNKernel's default): reads outside the source are 0. Other edge
//    modes are not emulated (abort).
//  * groups: inputFeatureChannels and outputFeatureChannels divisible by groups, and for
//    groups > 1 the channels of each group a multiple of 4 (MPSCNNConvolutionDescriptor
//    groups); MPSCNNDepthWiseConvolutionDescriptor: groups 1 and channel multiplier 1.
//  * accumulatorPrecisionOption (macOS 10.13.4): the fake starts at Half (the option's
//    zero value; Apple's pages do not state the kernel's default), computes in float32
//    only and aborts on Half, so code that does not ask for Float explicitly is caught
//    here rather than risking half-precision sums on a Mac.
//  * fusedNeuronDescriptor: none, or ReLU with a = 0 (the CPU backend's relu); other
//    neurons are not emulated. A gradient kernel's data source may not carry a neuron
//    (MPS's training graph refuses them; the gradient of a fused neuron is not the
//    convolution's).
//  * Images: float32 feature channels only (the fake's limit, not Apple's).
//  * Batches: the destination's numberOfImages images, from source image offset.z
//    (the default clipRect covers the whole destination).
// The gradient (emulation choices, flagged for a Mac run to confirm):
//  * -resultStateForSourceImage:sourceStates:destinationImage: makes an
//    MPSCNNConvolutionGradientState that records the convolution's parameters and offset
//    at that moment (Apple: the state "contains information about the MPSCNNKernel
//    parameters at the time it encoded", and it is an MPSImageSizeEncodingState), with
//    gradientForWeights ([O][KH][KW][Cg] float32) and gradientForBiases ([O] float32),
//    both nonnull as Apple declares them, in private storage (Apple leaves the storage
//    mode unsaid; private is the stricter: the CPU must blit them out).
//  * MPSCNNConvolutionGradient computes the exact adjoint of that recorded forward:
//    dL/dsource into destinationGradient (GradientWithData) with its own data source's
//    weights, and the sums over the batch of dL/dweights and dL/dbias into the state
//    (GradientWithWeightsAndBias). kernelOffsetX/Y must stay 0 (the fake takes the
//    placement from the state). sourceImage is read only for the weight gradient.
// The math runs on the CPU backend of conv (ops/conv/conv.h); the index maps between
// MPSImage storage and NHWC, and between OHWI and HWIO, are this file's own loops, so
// that comparing conv_metal.mm with the CPU backend tests conv_metal.mm's layouts.
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

namespace {

std::string S(int64_t v) { return std::to_string(v); }

// What a convolution kernel keeps from its data source.
struct ConvParams {
  int64_t k_w = 0, k_h = 0, in_c = 0, out_c = 0;
  int64_t stride_x = 1, stride_y = 1, dilation_x = 1, dilation_y = 1;
  int64_t groups = 1;  // as computed (C for depthwise)
  bool depthwise = false;
  bool relu = false;
  std::vector<float> weights;  // OHWI [O][KH][KW][Cg]
  std::vector<float> bias;     // [O], empty: none
  int64_t cg() const { return in_c / groups; }
  int64_t og() const { return out_c / groups; }
};

bool SameConvolution(const ConvParams& a, const ConvParams& b) {
  return a.k_w == b.k_w && a.k_h == b.k_h && a.in_c == b.in_c && a.out_c == b.out_c && a.stride_x == b.stride_x &&
         a.stride_y == b.stride_y && a.dilation_x == b.dilation_x && a.dilation_y == b.dilation_y &&
         a.groups == b.groups;
}

// The data source, read as the initializers do. false: -load said NO.
bool LoadDataSource(const char* method, id<MPSCNNConvolutionDataSource> ds, bool training, ConvParams* p) {
  if (ds == nil) EmuValidationFailure(method, "weights (the data source) is nil");
  if (![ds load]) return false;
  MPSCNNConvolutionDescriptor* d = [ds descriptor];
  if (d == nil) EmuValidationFailure(method, "the data source's descriptor is nil");
  p->k_w = static_cast<int64_t>([d kernelWidth]);
  p->k_h = static_cast<int64_t>([d kernelHeight]);
  p->in_c = static_cast<int64_t>([d inputFeatureChannels]);
  p->out_c = static_cast<int64_t>([d outputFeatureChannels]);
  p->stride_x = static_cast<int64_t>([d strideInPixelsX]);
  p->stride_y = static_cast<int64_t>([d strideInPixelsY]);
  p->dilation_x = static_cast<int64_t>([d dilationRateX]);
  p->dilation_y = static_cast<int64_t>([d dilationRateY]);
  const int64_t groups = static_cast<int64_t>([d groups]);
  if (p->k_w < 1 || p->k_h < 1 || p->in_c < 1 || p->out_c < 1 || p->stride_x < 1 || p->stride_y < 1 ||
      p->dilation_x < 1 || p->dilation_y < 1 || groups < 1) {
    EmuValidationFailure(method, "descriptor: kernel sizes, feature channels, strides, dilation rates and groups "
                                 "must all be at least 1");
  }
  p->depthwise = [d isKindOfClass:[MPSCNNDepthWiseConvolutionDescriptor class]];
  if (p->depthwise) {
    if (groups != 1) EmuValidationFailure(method, "a depthwise descriptor's groups must be 1, got " + S(groups));
    if (p->out_c != p->in_c) {
      EmuValidationFailure(method, "depthwise convolution supports a channel multiplier of 1 only "
                                   "(outputFeatureChannels " + S(p->out_c) + " != inputFeatureChannels " +
                                       S(p->in_c) + ")");
    }
    p->groups = p->in_c;
  } else {
    if (p->in_c % groups != 0 || p->out_c % groups != 0) {
      EmuValidationFailure(method, "inputFeatureChannels (" + S(p->in_c) + ") and outputFeatureChannels (" +
                                       S(p->out_c) + ") must be divisible by groups (" + S(groups) + ")");
    }
    if (groups > 1 && ((p->in_c / groups) % 4 != 0 || (p->out_c / groups) % 4 != 0)) {
      EmuValidationFailure(method, "with groups > 1 the channels of each group must be a multiple of 4 (" +
                                       S(p->in_c / groups) + " in, " + S(p->out_c / groups) + " out)");
    }
    p->groups = groups;
  }
  MPSNNNeuronDescriptor* neuron = [d fusedNeuronDescriptor];
  if (neuron != nil && [neuron neuronType] != MPSCNNNeuronTypeNone) {
    if (training) {
      EmuValidationFailure(method, "emulation check: a gradient kernel's descriptor carries a fused neuron "
                                   "(its gradient is not the convolution's; MPS's training graph refuses it)");
    }
    if ([neuron neuronType] != MPSCNNNeuronTypeReLU || [neuron a] != 0.0f) {
      EmuValidationFailure(method, "emulation limit: the fused neuron is not ReLU with a = 0");
    }
    p->relu = true;
  }
  if ([ds dataType] != MPSDataTypeFloat32) {
    EmuValidationFailure(method, std::string("emulation limit: weights of ") + EmuDataTypeName([ds dataType]) +
                                     " (the fake reads MPSDataTypeFloat32 weights only)");
  }
  const float* w = static_cast<const float*>([ds weights]);
  if (w == nullptr) EmuValidationFailure(method, "the data source's weights are NULL");
  p->weights.assign(w, w + p->out_c * p->k_h * p->k_w * p->cg());
  const float* b = [ds biasTerms];
  if (b != nullptr) p->bias.assign(b, b + p->out_c);
  [ds purge];
  return true;
}

// OHWI [O][KH][KW][Cg] -> HWIO [KH][KW][Cg][O], the CPU backend's filter layout.
std::vector<float> ToHwio(const ConvParams& p, const std::vector<float>& ohwi) {
  const int64_t cg = p.cg();
  std::vector<float> hwio(ohwi.size());
  for (int64_t o = 0; o < p.out_c; ++o)
    for (int64_t kh = 0; kh < p.k_h; ++kh)
      for (int64_t kw = 0; kw < p.k_w; ++kw)
        for (int64_t c = 0; c < cg; ++c)
          hwio[((kh * p.k_w + kw) * cg + c) * p.out_c + o] = ohwi[((o * p.k_h + kh) * p.k_w + kw) * cg + c];
  return hwio;
}

std::vector<float> ToOhwi(const ConvParams& p, const std::vector<float>& hwio) {
  const int64_t cg = p.cg();
  std::vector<float> ohwi(hwio.size());
  for (int64_t o = 0; o < p.out_c; ++o)
    for (int64_t kh = 0; kh < p.k_h; ++kh)
      for (int64_t kw = 0; kw < p.k_w; ++kw)
        for (int64_t c = 0; c < cg; ++c)
          ohwi[((o * p.k_h + kh) * p.k_w + kw) * cg + c] = hwio[((kh * p.k_w + kw) * cg + c) * p.out_c + o];
  return ohwi;
}

void CheckFloatImage(const char* method, const char* name, MPSImage* image, id<MTLDevice> device) {
  if (image == nil) EmuValidationFailure(method, std::string(name) + " is nil");
  if ([image device] != device) EmuValidationFailure(method, std::string(name) + " is on another device");
  if ([image featureChannelFormat] != MPSImageFeatureChannelFormatFloat32) {
    EmuValidationFailure(method, std::string("emulation limit: ") + name +
                                     " is not a float32 image (the fake convolves float32 only)");
  }
}

// Images [first, first + count) of an image as dense NHWC floats, from row row0 and
// column col0 on.
std::vector<float> ReadNhwc(MPSImage* image, int64_t first, int64_t count, int64_t row0 = 0, int64_t col0 = 0) {
  const int64_t H = [image height] - row0, W = [image width] - col0, C = [image featureChannels];
  std::vector<float> out(static_cast<size_t>(count * H * W * C));
  const uint8_t* src = [image gpuBytes];
  for (int64_t n = 0; n < count; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c)
          std::memcpy(&out[((n * H + h) * W + w) * C + c],
                      src + [image indexOfImage:first + n channel:c row:row0 + h column:col0 + w] * sizeof(float),
                      sizeof(float));
  return out;
}

// Writes images [0, count) from NHWC values of rows [row0, height) and columns
// [col0, width) (zeros elsewhere), zeroing the padding channels of the last slice.
void WriteNhwc(MPSImage* image, int64_t count, const std::vector<float>& in, int64_t row0 = 0, int64_t col0 = 0) {
  const int64_t H = [image height], W = [image width], C = [image featureChannels];
  const int64_t h_in = H - row0, w_in = W - col0;
  uint8_t* dst = [image gpuBytes];
  for (int64_t n = 0; n < count; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        for (int64_t c = 0; c < C; ++c) {
          const float v = h >= row0 && w >= col0 ? in[((n * h_in + h - row0) * w_in + w - col0) * C + c] : 0.0f;
          std::memcpy(dst + [image indexOfImage:n channel:c row:h column:w] * sizeof(float), &v, sizeof(float));
        }
        for (int64_t c = C; c % 4 != 0; ++c)
          std::memset(dst + [image indexOfImage:n channel:c row:h column:w] * sizeof(float), 0, sizeof(float));
      }
}

// The CPU backend's geometry for what MPS computes from `offset` over these images. An
// offset that starts the first window inside the source (a negative padding) becomes a
// source cropped from row0/col0 on: nothing before it is read.
struct Placement {
  tfmps::conv::Conv2DGeometry g;
  int64_t first = 0, row0 = 0, col0 = 0;
};

Placement GeometryOf(const char* method, const ConvParams& p, MPSOffset offset, MPSImage* source,
                     MPSImage* destination) {
  Placement pl;
  tfmps::conv::Conv2DGeometry& g = pl.g;
  g = {};
  g.batch = static_cast<int64_t>([destination numberOfImages]);
  g.in_c = p.in_c;
  g.k_h = p.k_h;
  g.k_w = p.k_w;
  g.out_c = p.out_c;
  g.groups = p.groups;
  g.in_c_per_group = p.cg();
  g.out_c_per_group = p.og();
  g.stride_h = p.stride_y;
  g.stride_w = p.stride_x;
  g.dilation_h = p.dilation_y;
  g.dilation_w = p.dilation_x;
  g.out_h = [destination height];
  g.out_w = [destination width];
  g.pad_top = (p.k_h >> 1) * p.dilation_y - offset.y;
  g.pad_left = (p.k_w >> 1) * p.dilation_x - offset.x;
  pl.row0 = std::max<int64_t>(0, -g.pad_top);
  pl.col0 = std::max<int64_t>(0, -g.pad_left);
  g.pad_top = std::max<int64_t>(0, g.pad_top);
  g.pad_left = std::max<int64_t>(0, g.pad_left);
  g.in_h = static_cast<int64_t>([source height]) - pl.row0;
  g.in_w = static_cast<int64_t>([source width]) - pl.col0;
  if (g.in_h <= 0 || g.in_w <= 0) {
    EmuValidationFailure(method, "emulation limit: offset (" + S(offset.x) + ", " + S(offset.y) +
                                     ") starts every window past the source's edge");
  }
  g.pad_bottom = std::max<int64_t>(0, (g.out_h - 1) * g.stride_h + (g.k_h - 1) * g.dilation_h + 1 - g.in_h - g.pad_top);
  g.pad_right = std::max<int64_t>(0, (g.out_w - 1) * g.stride_w + (g.k_w - 1) * g.dilation_w + 1 - g.in_w - g.pad_left);
  if (offset.z < 0 || static_cast<int64_t>([source numberOfImages]) < offset.z + g.batch) {
    EmuValidationFailure(method, "offset.z (" + S(offset.z) + ") + the destination's " + S(g.batch) +
                                     " images exceed the source's " + S([source numberOfImages]) + " images");
  }
  pl.first = offset.z;
  return pl;
}

tfmps::conv::CpuContext SerialCpu(std::vector<float>* workspace, int64_t floats) {
  workspace->assign(static_cast<size_t>(std::max<int64_t>(floats, 1)), 0.0f);
  tfmps::conv::CpuContext cpu;
  cpu.parallel = [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    if (total > 0) fn(0, total);
  };
  cpu.threads = 1;
  cpu.workspace = workspace->data();
  cpu.workspace_size = static_cast<int64_t>(workspace->size());
  return cpu;
}

}  // namespace

// ------------------------------------------------------------------ descriptors
@implementation MPSNNNeuronDescriptor {
  MPSCNNNeuronType _neuronType;
  float _a, _b, _c;
}

+ (MPSNNNeuronDescriptor*)cnnNeuronDescriptorWithType:(MPSCNNNeuronType)neuronType {
  return [self cnnNeuronDescriptorWithType:neuronType a:0.0f];
}

+ (MPSNNNeuronDescriptor*)cnnNeuronDescriptorWithType:(MPSCNNNeuronType)neuronType a:(float)a {
  MPSNNNeuronDescriptor* d = [[self alloc] init];
  d->_neuronType = neuronType;
  d->_a = a;
  return d;
}

- (id)copyWithZone:(NSZone*)zone {
  MPSNNNeuronDescriptor* d = [[MPSNNNeuronDescriptor alloc] init];
  d->_neuronType = _neuronType;
  d->_a = _a;
  d->_b = _b;
  d->_c = _c;
  return d;
}

- (MPSCNNNeuronType)neuronType { return _neuronType; }
- (void)setNeuronType:(MPSCNNNeuronType)v { _neuronType = v; }
- (float)a { return _a; }
- (void)setA:(float)v { _a = v; }
- (float)b { return _b; }
- (void)setB:(float)v { _b = v; }
- (float)c { return _c; }
- (void)setC:(float)v { _c = v; }

@end

@implementation MPSCNNConvolutionDescriptor {
  NSUInteger _kernelWidth, _kernelHeight, _inputFeatureChannels, _outputFeatureChannels;
  NSUInteger _strideInPixelsX, _strideInPixelsY, _groups, _dilationRateX, _dilationRateY;
  MPSNNNeuronDescriptor* _fusedNeuronDescriptor;
}

// Apple's defaults: a 3 x 3 kernel, stride, dilation and groups 1.
- (instancetype)init {
  self = [super init];
  if (self == nil) return nil;
  _kernelWidth = _kernelHeight = 3;
  _inputFeatureChannels = _outputFeatureChannels = 1;
  _strideInPixelsX = _strideInPixelsY = _groups = _dilationRateX = _dilationRateY = 1;
  return self;
}

+ (instancetype)cnnConvolutionDescriptorWithKernelWidth:(NSUInteger)kernelWidth
                                           kernelHeight:(NSUInteger)kernelHeight
                                   inputFeatureChannels:(NSUInteger)inputFeatureChannels
                                  outputFeatureChannels:(NSUInteger)outputFeatureChannels {
  MPSCNNConvolutionDescriptor* d = [[self alloc] init];
  d->_kernelWidth = kernelWidth;
  d->_kernelHeight = kernelHeight;
  d->_inputFeatureChannels = inputFeatureChannels;
  d->_outputFeatureChannels = outputFeatureChannels;
  return d;
}

- (id)copyWithZone:(NSZone*)zone {
  MPSCNNConvolutionDescriptor* d = [[[self class] alloc] init];
  d->_kernelWidth = _kernelWidth;
  d->_kernelHeight = _kernelHeight;
  d->_inputFeatureChannels = _inputFeatureChannels;
  d->_outputFeatureChannels = _outputFeatureChannels;
  d->_strideInPixelsX = _strideInPixelsX;
  d->_strideInPixelsY = _strideInPixelsY;
  d->_groups = _groups;
  d->_dilationRateX = _dilationRateX;
  d->_dilationRateY = _dilationRateY;
  d->_fusedNeuronDescriptor = _fusedNeuronDescriptor;
  return d;
}

- (NSUInteger)kernelWidth { return _kernelWidth; }
- (void)setKernelWidth:(NSUInteger)v { _kernelWidth = v; }
- (NSUInteger)kernelHeight { return _kernelHeight; }
- (void)setKernelHeight:(NSUInteger)v { _kernelHeight = v; }
- (NSUInteger)inputFeatureChannels { return _inputFeatureChannels; }
- (void)setInputFeatureChannels:(NSUInteger)v { _inputFeatureChannels = v; }
- (NSUInteger)outputFeatureChannels { return _outputFeatureChannels; }
- (void)setOutputFeatureChannels:(NSUInteger)v { _outputFeatureChannels = v; }
- (NSUInteger)strideInPixelsX { return _strideInPixelsX; }
- (void)setStrideInPixelsX:(NSUInteger)v { _strideInPixelsX = v; }
- (NSUInteger)strideInPixelsY { return _strideInPixelsY; }
- (void)setStrideInPixelsY:(NSUInteger)v { _strideInPixelsY = v; }
- (NSUInteger)groups { return _groups; }
- (void)setGroups:(NSUInteger)v { _groups = v; }
- (NSUInteger)dilationRateX { return _dilationRateX; }
- (void)setDilationRateX:(NSUInteger)v { _dilationRateX = v; }
- (NSUInteger)dilationRateY { return _dilationRateY; }
- (void)setDilationRateY:(NSUInteger)v { _dilationRateY = v; }
- (MPSNNNeuronDescriptor*)fusedNeuronDescriptor { return _fusedNeuronDescriptor; }
- (void)setFusedNeuronDescriptor:(MPSNNNeuronDescriptor*)v { _fusedNeuronDescriptor = v; }

@end

@implementation MPSCNNDepthWiseConvolutionDescriptor

- (NSUInteger)channelMultiplier {
  const NSUInteger in = [self inputFeatureChannels];
  return in == 0 ? 0 : [self outputFeatureChannels] / in;
}

@end

// ------------------------------------------------------------------------ states
@implementation MPSState
@end

@implementation MPSNNGradientState
@end

@implementation MPSCNNConvolutionGradientState {
 @public
  id<MTLBuffer> _gradientForWeights;
  id<MTLBuffer> _gradientForBiases;
  MPSCNNConvolution* _convolution;
  ConvParams _params;    // the forward's, without the weights
  Placement _placement;  // as the forward's offset and images give it
}

- (id<MTLBuffer>)gradientForWeights { return _gradientForWeights; }
- (id<MTLBuffer>)gradientForBiases { return _gradientForBiases; }
- (MPSCNNConvolution*)convolution { return _convolution; }

@end

// ------------------------------------------------------------------------ kernels
@implementation MPSCNNKernel {
 @protected
  MPSOffset _offset;
  MPSImageEdgeMode _edgeMode;
}

- (MPSOffset)offset { return _offset; }
- (void)setOffset:(MPSOffset)v { _offset = v; }
- (MPSImageEdgeMode)edgeMode { return _edgeMode; }
- (void)setEdgeMode:(MPSImageEdgeMode)v { _edgeMode = v; }
// Subclasses report their own sizes.
- (NSUInteger)kernelWidth { return 1; }
- (NSUInteger)kernelHeight { return 1; }
- (NSUInteger)strideInPixelsX { return 1; }
- (NSUInteger)strideInPixelsY { return 1; }
- (NSUInteger)dilationRateX { return 1; }
- (NSUInteger)dilationRateY { return 1; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage {
  EmuValidationFailure((std::string("-[") + object_getClassName(self) +
                        " encodeToCommandBuffer:sourceImage:destinationImage:]").c_str(),
                       "this MPSCNNKernel is not emulated");
}

- (MPSState*)resultStateForSourceImage:(MPSImage*)sourceImage
                          sourceStates:(NSArray<MPSState*>*)sourceStates
                      destinationImage:(MPSImage*)destinationImage {
  return nil;
}

@end

@implementation MPSCNNConvolution {
  ConvParams _p;
  MPSNNConvolutionAccumulatorPrecisionOption _accumulatorPrecisionOption;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device weights:(id<MPSCNNConvolutionDataSource>)weights {
  const char* method = "-[MPSCNNConvolution initWithDevice:weights:]";
  if (weights == nil) EmuValidationFailure(method, "weights (the data source) is nil");
  self = [super initEmuWithDevice:device];
  if (self == nil) return nil;
  if (!LoadDataSource(method, weights, /*training=*/false, &_p)) return nil;
  _accumulatorPrecisionOption = MPSNNConvolutionAccumulatorPrecisionOptionHalf;  // Apple's default
  _edgeMode = MPSImageEdgeModeZero;
  return self;
}

- (NSUInteger)kernelWidth { return static_cast<NSUInteger>(_p.k_w); }
- (NSUInteger)kernelHeight { return static_cast<NSUInteger>(_p.k_h); }
- (NSUInteger)strideInPixelsX { return static_cast<NSUInteger>(_p.stride_x); }
- (NSUInteger)strideInPixelsY { return static_cast<NSUInteger>(_p.stride_y); }
- (NSUInteger)dilationRateX { return static_cast<NSUInteger>(_p.dilation_x); }
- (NSUInteger)dilationRateY { return static_cast<NSUInteger>(_p.dilation_y); }
- (NSUInteger)inputFeatureChannels { return static_cast<NSUInteger>(_p.in_c); }
- (NSUInteger)outputFeatureChannels { return static_cast<NSUInteger>(_p.out_c); }
- (NSUInteger)groups { return static_cast<NSUInteger>(_p.depthwise ? 1 : _p.groups); }
- (MPSNNConvolutionAccumulatorPrecisionOption)accumulatorPrecisionOption { return _accumulatorPrecisionOption; }
- (void)setAccumulatorPrecisionOption:(MPSNNConvolutionAccumulatorPrecisionOption)v {
  _accumulatorPrecisionOption = v;
}

- (void)checkSource:(MPSImage*)source destination:(MPSImage*)destination method:(const char*)method {
  CheckFloatImage(method, "sourceImage", source, [self device]);
  CheckFloatImage(method, "destinationImage", destination, [self device]);
  if (static_cast<int64_t>([source featureChannels]) != _p.in_c) {
    EmuValidationFailure(method, "sourceImage has " + S([source featureChannels]) +
                                     " feature channels; the convolution's inputFeatureChannels is " + S(_p.in_c));
  }
  if (static_cast<int64_t>([destination featureChannels]) != _p.out_c) {
    EmuValidationFailure(method, "destinationImage has " + S([destination featureChannels]) +
                                     " feature channels; the convolution's outputFeatureChannels is " + S(_p.out_c));
  }
  if (_edgeMode != MPSImageEdgeModeZero) {
    EmuValidationFailure(method, "emulation limit: edgeMode other than MPSImageEdgeModeZero");
  }
}

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSCNNConvolution encodeToCommandBuffer:sourceImage:destinationImage:]";
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  [self checkSource:sourceImage destination:destinationImage method:method];
  if (sourceImage == destinationImage) {
    EmuValidationFailure(method, "emulation check: the source and destination are one image");
  }
  if (_accumulatorPrecisionOption != MPSNNConvolutionAccumulatorPrecisionOptionFloat) {
    EmuValidationFailure(method, "emulation limit: accumulatorPrecisionOption is Half (Apple's default); the fake "
                                 "sums in float32 only: set MPSNNConvolutionAccumulatorPrecisionOptionFloat");
  }
  const Placement pl = GeometryOf(method, _p, _offset, sourceImage, destinationImage);
  const std::vector<float> hwio = ToHwio(_p, _p.weights);
  const std::vector<float> bias = _p.bias;
  const bool relu = _p.relu;
  MPSImage* src = sourceImage;
  MPSImage* dst = destinationImage;
  [dst beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [pl, hwio, bias, relu, src, dst] {
        const tfmps::conv::Conv2DGeometry& g = pl.g;
        const std::vector<float> x = ReadNhwc(src, pl.first, g.batch, pl.row0, pl.col0);
        std::vector<float> y(static_cast<size_t>(g.out_pixels() * g.out_c));
        std::vector<float> workspace;
        const tfmps::conv::CpuContext cpu = SerialCpu(&workspace, tfmps::conv::Conv2DForwardCpuWorkspace(g, 1));
        tfmps::conv::Conv2DForwardArgs a{x.data(), hwio.data(), bias.empty() ? nullptr : bias.data(),
                                         relu ? tfmps::conv::Activation::kRelu : tfmps::conv::Activation::kNone,
                                         y.data()};
        tfmps::conv::Conv2DForwardCpu(g, a, cpu);
        WriteNhwc(dst, g.batch, y);
      },
      [dst] { [dst endGpuWrite]; });
}

- (MPSCNNConvolutionGradientState*)resultStateForSourceImage:(MPSImage*)sourceImage
                                                sourceStates:(NSArray<MPSState*>*)sourceStates
                                            destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSCNNConvolution resultStateForSourceImage:sourceStates:destinationImage:]";
  [self checkSource:sourceImage destination:destinationImage method:method];
  if (EmuInitShouldFail("MPSCNNConvolutionGradientState")) return nil;
  MPSCNNConvolutionGradientState* state = [[MPSCNNConvolutionGradientState alloc] init];
  if (state == nil) return nil;
  state->_params = _p;
  state->_params.weights.clear();
  state->_placement = GeometryOf(method, _p, _offset, sourceImage, destinationImage);
  state->_convolution = self;
  const size_t weight_bytes = _p.weights.size() * sizeof(float);
  state->_gradientForWeights = [[self device] newBufferWithLength:weight_bytes options:MTLResourceStorageModePrivate];
  state->_gradientForBiases = [[self device] newBufferWithLength:static_cast<size_t>(_p.out_c) * sizeof(float)
                                                         options:MTLResourceStorageModePrivate];
  if (state->_gradientForWeights == nil || state->_gradientForBiases == nil) return nil;
  return state;
}

@end

@implementation MPSCNNBinaryKernel
@end

@implementation MPSCNNGradientKernel {
 @protected
  NSInteger _kernelOffsetX, _kernelOffsetY;
}

- (NSInteger)kernelOffsetX { return _kernelOffsetX; }
- (void)setKernelOffsetX:(NSInteger)v { _kernelOffsetX = v; }
- (NSInteger)kernelOffsetY { return _kernelOffsetY; }
- (void)setKernelOffsetY:(NSInteger)v { _kernelOffsetY = v; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
               sourceGradient:(MPSImage*)sourceGradient
                  sourceImage:(MPSImage*)sourceImage
                gradientState:(MPSState*)gradientState
          destinationGradient:(MPSImage*)destinationGradient {
  EmuValidationFailure((std::string("-[") + object_getClassName(self) +
                        " encodeToCommandBuffer:sourceGradient:sourceImage:gradientState:destinationGradient:]")
                           .c_str(),
                       "this MPSCNNGradientKernel is not emulated");
}

@end

@implementation MPSCNNConvolutionGradient {
  ConvParams _p;
  MPSCNNConvolutionGradientOption _gradientOption;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device weights:(id<MPSCNNConvolutionDataSource>)weights {
  const char* method = "-[MPSCNNConvolutionGradient initWithDevice:weights:]";
  if (weights == nil) EmuValidationFailure(method, "weights (the data source) is nil");
  self = [super initEmuWithDevice:device];
  if (self == nil) return nil;
  if (!LoadDataSource(method, weights, /*training=*/true, &_p)) return nil;
  _gradientOption = MPSCNNConvolutionGradientOptionAll;  // Apple's default
  return self;
}

- (NSUInteger)sourceGradientFeatureChannels { return static_cast<NSUInteger>(_p.out_c); }
- (NSUInteger)sourceImageFeatureChannels { return static_cast<NSUInteger>(_p.in_c); }
- (NSUInteger)groups { return static_cast<NSUInteger>(_p.depthwise ? 1 : _p.groups); }
- (MPSCNNConvolutionGradientOption)gradientOption { return _gradientOption; }
- (void)setGradientOption:(MPSCNNConvolutionGradientOption)v { _gradientOption = v; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
               sourceGradient:(MPSImage*)sourceGradient
                  sourceImage:(MPSImage*)sourceImage
                gradientState:(MPSState*)gradientState
          destinationGradient:(MPSImage*)destinationGradient {
  const char* method =
      "-[MPSCNNConvolutionGradient encodeToCommandBuffer:sourceGradient:sourceImage:gradientState:"
      "destinationGradient:]";
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  if (![gradientState isKindOfClass:[MPSCNNConvolutionGradientState class]]) {
    EmuValidationFailure(method, "gradientState is not an MPSCNNConvolutionGradientState");
  }
  MPSCNNConvolutionGradientState* state = (MPSCNNConvolutionGradientState*)gradientState;
  CheckFloatImage(method, "sourceGradient", sourceGradient, [self device]);
  CheckFloatImage(method, "sourceImage", sourceImage, [self device]);
  CheckFloatImage(method, "destinationGradient", destinationGradient, [self device]);
  const int options = static_cast<int>(_gradientOption);
  if ((options & 3) == 0 || (options & ~3) != 0) {
    EmuValidationFailure(method, "gradientOption " + S(options) + " is not a valid MPSCNNConvolutionGradientOption");
  }
  if (_kernelOffsetX != 0 || _kernelOffsetY != 0) {
    EmuValidationFailure(method, "emulation limit: kernelOffsetX/Y are not 0 (the fake places the kernel as the "
                                 "gradient state's forward convolution did)");
  }
  if (!SameConvolution(_p, state->_params)) {
    EmuValidationFailure(method, "emulation check: the gradient kernel's data source describes another "
                                 "convolution than the gradient state's");
  }
  const Placement pl = state->_placement;
  const tfmps::conv::Conv2DGeometry& g = pl.g;
  const int64_t src_h = g.in_h + pl.row0, src_w = g.in_w + pl.col0;
  auto same = [](MPSImage* im, int64_t n, int64_t h, int64_t w, int64_t c) {
    return static_cast<int64_t>([im numberOfImages]) == n && static_cast<int64_t>([im height]) == h &&
           static_cast<int64_t>([im width]) == w && static_cast<int64_t>([im featureChannels]) == c;
  };
  if (!same(sourceGradient, g.batch, g.out_h, g.out_w, g.out_c)) {
    EmuValidationFailure(method, "sourceGradient is not the size of the forward's destination (" + S(g.batch) +
                                     " images of " + S(g.out_h) + " x " + S(g.out_w) + " x " + S(g.out_c) + ")");
  }
  if (static_cast<int64_t>([sourceImage numberOfImages]) < pl.first + g.batch ||
      static_cast<int64_t>([sourceImage height]) != src_h || static_cast<int64_t>([sourceImage width]) != src_w ||
      static_cast<int64_t>([sourceImage featureChannels]) != g.in_c) {
    EmuValidationFailure(method, "sourceImage is not the forward's source (" + S(src_h) + " x " + S(src_w) +
                                     " x " + S(g.in_c) + ")");
  }
  if (!same(destinationGradient, g.batch, src_h, src_w, g.in_c)) {
    EmuValidationFailure(method, "destinationGradient is not the size of the forward's source images");
  }
  if (destinationGradient == sourceGradient || destinationGradient == sourceImage) {
    EmuValidationFailure(method, "emulation check: destinationGradient is also a source");
  }
  const bool data = (options & MPSCNNConvolutionGradientOptionGradientWithData) != 0;
  const bool weights = (options & MPSCNNConvolutionGradientOptionGradientWithWeightsAndBias) != 0;
  const std::vector<float> hwio = data ? ToHwio(_p, _p.weights) : std::vector<float>();
  const ConvParams shape = state->_params;
  MPSImage* dy_image = sourceGradient;
  MPSImage* x_image = sourceImage;
  MPSImage* dx_image = destinationGradient;
  id<MTLBuffer> dw_buffer = state->_gradientForWeights;
  id<MTLBuffer> db_buffer = state->_gradientForBiases;
  if (data) [dx_image beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [pl, data, weights, hwio, shape, dy_image, x_image, dx_image, dw_buffer, db_buffer] {
        const tfmps::conv::Conv2DGeometry& g = pl.g;
        const std::vector<float> dy = ReadNhwc(dy_image, 0, g.batch);
        std::vector<float> workspace;
        if (data) {
          std::vector<float> dx(static_cast<size_t>(g.in_pixels() * g.in_c));
          const tfmps::conv::CpuContext cpu =
              SerialCpu(&workspace, tfmps::conv::Conv2DBackpropInputCpuWorkspace(g, 1));
          tfmps::conv::Conv2DBackpropInputArgs a{hwio.data(), dy.data(), dx.data()};
          tfmps::conv::Conv2DBackpropInputCpu(g, a, cpu);
          WriteNhwc(dx_image, g.batch, dx, pl.row0, pl.col0);
        }
        if (weights) {
          const std::vector<float> x = ReadNhwc(x_image, pl.first, g.batch, pl.row0, pl.col0);
          std::vector<float> dw(static_cast<size_t>(g.patch() * g.out_c));
          std::vector<float> db(static_cast<size_t>(g.out_c));
          const tfmps::conv::CpuContext cpu =
              SerialCpu(&workspace, tfmps::conv::Conv2DBackpropFilterCpuWorkspace(g, 1, /*bias=*/true));
          tfmps::conv::Conv2DBackpropFilterArgs a{x.data(), dy.data(), dw.data(), db.data()};
          tfmps::conv::Conv2DBackpropFilterCpu(g, a, cpu);
          const std::vector<float> ohwi = ToOhwi(shape, dw);
          std::memcpy(EmuBufferBytes(dw_buffer), ohwi.data(), ohwi.size() * sizeof(float));
          std::memcpy(EmuBufferBytes(db_buffer), db.data(), db.size() * sizeof(float));
        }
      },
      [data, dx_image] {
        if (data) [dx_image endGpuWrite];
      });
}

@end
