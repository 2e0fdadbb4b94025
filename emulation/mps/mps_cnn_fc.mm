// CPU fakes of MPS's MPSCNNConvolution.h: MPSCNNFullyConnected(+Gradient).
// Linux emulation only; built with ARC. They compute with the CPU backend of the dense
// family (ops/dense/dense.h, float32 accumulation).
//
// What is emulated: MPSCNNFullyConnected's initializer, encode and
// -resultStateForSourceImage:sourceStates:destinationImage: (an
// MPSCNNConvolutionGradientState with gradientForWeights [No][1][1][Ni] and
// gradientForBiases [No], private float32 buffers, as mps_cnn.mm's convolution makes
// them); MPSCNNFullyConnectedGradient's initializer and encode (GradientWithData: dx =
// dy W into destinationGradient with its own data source's weights;
// GradientWithWeightsAndBias: the batch sums dW = dy^T x, db = sum dy into the state).
// What Apple documents, and what the fake does with it:
//  * MPSCNNFullyConnected (MPSCNNConvolution subclass, -initWithDevice:weights:): "the
//    kernel width is equal to the width of the source image, and the kernel height is
//    equal to the height of the source image. The width and height of the output is
//    1 x 1"; it convolves a source.width x source.height x Ni image with
//    Weights[No][source.width][source.height][Ni] into 1 x 1 x No; kernelWidth ==
//    source.width, kernelHeight == source.height, clipRect.size 1 x 1. Descriptor
//    strides and groups must be 1 (the deprecated initializer's page).
//  * The data source is read as MPSCNNConvolution's: -load (NO: nil), -descriptor,
//    -dataType, -weights, -biasTerms ([No] or NULL), -purge; the kernel keeps copies.
//  * fusedNeuronDescriptor: none, or ReLU with a = 0 (as mps_cnn.mm's convolution).
//  * MPSCNNFullyConnectedGradient (macOS 10.13.4) "computes the gradient for fully
//    connected layer"; it inherits MPSCNNConvolutionGradient (gradientOption, default
//    All) and, as a gradient kernel, takes no fused neuron (the fake aborts on one).
//  * accumulatorPrecisionOption: starts at Half, as mps_cnn.mm's convolution, and the
//    encode aborts unless it is Float (the fake sums in float32 only).
// Where Apple is silent, what the fake chooses (flag for a Mac run):
//  * Sources: 1 x 1 only (emulation limit; the [No][W][H][Ni] order of wider sources and
//    the offset that would place the window are not emulated), so the kernel is 1 x 1.
//  * The destination must be a 1 x 1 image with numberOfImages >= 1, and the source
//    must have the same numberOfImages (one output per source image); offset must be
//    (0, 0, 0). Float32 images only (the fake's limit).
//  * The gradient state (Apple: gradientForWeights / gradientForBiases nonnull, "the
//    gradient with respect to weights and biases"; its layout is taken to be the data
//    source's weights layout, [No][1][1][Ni] here, as mps_cnn.mm takes the
//    convolution's): private float32 buffers (the code must blit them to read them),
//    written whole by each GradientWithWeightsAndBias encode (the sums over the batch;
//    no accumulation across encodes). It records the forward kernel only, not the
//    batch: the gradient encode checks the images against each other and the layer.
//  * The gradient computes dx with its own data source's weights (Apple: "the same data
//    source provider" as the forward's); sourceImage is read only for the weight
//    gradient. kernelOffsetX/Y must stay 0.
//  * Apple's MPSCNNConvolutionGradient page calls the forward weight order
//    [No][kernelWidth][kernelHeight][Ni]; with the 1 x 1 kernels emulated here every
//    reading agrees. A Mac run should confirm the 1 x 1 FC's [No][Ni] order with one
//    non-symmetric W (tests/test_dense_metal.py's exact small-integer cases).
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
#include "ops/dense/dense.h"

namespace {

// mps_cnn.mm's ConvParams, field for field: MPSCNNConvolution's ivar, mirrored below.
struct ConvParamsMirror {
  int64_t k_w = 0, k_h = 0, in_c = 0, out_c = 0;
  int64_t stride_x = 1, stride_y = 1, dilation_x = 1, dilation_y = 1;
  int64_t groups = 1;
  bool depthwise = false;
  bool relu = false;
  std::vector<float> weights;
  std::vector<float> bias;
};

}  // namespace

// MPSCNNKernel's and MPSCNNConvolution's ivars, as mps_cnn.mm's @implementations declare
// them (mps_cnn_norm.mm says why a subclass in another file mirrors them; the runtime
// checks the layout when it loads the classes).
@interface MPSCNNKernel () {
 @protected
  MPSOffset _offset;
  MPSImageEdgeMode _edgeMode;
}
@end

@interface MPSCNNConvolution () {
  ConvParamsMirror _p;
  MPSNNConvolutionAccumulatorPrecisionOption _accumulatorPrecisionOption;
}
@end

// MPSCNNConvolutionGradientState's ivars that the fully connected kernels set, as
// mps_cnn.mm's @implementation declares them (@public there). Their offsets are the
// symbols mps_cnn.mm defines, so a renamed ivar fails at link time; no class here
// subclasses the state, so the others need no mirror.
@interface MPSCNNConvolutionGradientState () {
 @public
  id<MTLBuffer> _gradientForWeights;
  id<MTLBuffer> _gradientForBiases;
  MPSCNNConvolution* _convolution;
}
@end

@interface MPSCNNGradientKernel () {
 @protected
  NSInteger _kernelOffsetX, _kernelOffsetY;
}
@end

@interface MPSCNNConvolutionGradient () {
  ConvParamsMirror _p;
  MPSCNNConvolutionGradientOption _gradientOption;
}
@end

namespace {

std::string S(int64_t v) { return std::to_string(v); }

// What a fully connected kernel keeps from its data source.
struct FcParams {
  int64_t in = 0, out = 0;     // Ni, No
  bool relu = false;
  std::vector<float> weights;  // Apple's [No][1][1][Ni]
  std::vector<float> bias;     // [No], empty: none
};

bool LoadFc(const char* method, id<MPSCNNConvolutionDataSource> ds, bool training, FcParams* p) {
  if (ds == nil) EmuValidationFailure(method, "weights (the data source) is nil");
  if (![ds load]) return false;
  MPSCNNConvolutionDescriptor* d = [ds descriptor];
  if (d == nil) EmuValidationFailure(method, "the data source's descriptor is nil");
  p->in = static_cast<int64_t>([d inputFeatureChannels]);
  p->out = static_cast<int64_t>([d outputFeatureChannels]);
  if (p->in < 1 || p->out < 1) EmuValidationFailure(method, "descriptor: feature channels must be at least 1");
  if ([d strideInPixelsX] != 1 || [d strideInPixelsY] != 1 || [d groups] != 1) {
    EmuValidationFailure(method, "descriptor: strideInPixelsX, strideInPixelsY and groups must be 1");
  }
  if ([d dilationRateX] != 1 || [d dilationRateY] != 1) {
    EmuValidationFailure(method, "emulation limit: dilation rates other than 1");
  }
  if ([d isKindOfClass:[MPSCNNDepthWiseConvolutionDescriptor class]]) {
    EmuValidationFailure(method, "emulation limit: a depthwise descriptor");
  }
  if ([d kernelWidth] != 1 || [d kernelHeight] != 1) {
    EmuValidationFailure(method, "emulation limit: kernel " + S([d kernelWidth]) + " x " + S([d kernelHeight]) +
                                     " (the fake emulates 1 x 1 sources, so a 1 x 1 kernel, only)");
  }
  MPSNNNeuronDescriptor* neuron = [d fusedNeuronDescriptor];
  if (neuron != nil && [neuron neuronType] != MPSCNNNeuronTypeNone) {
    if (training) {
      EmuValidationFailure(method, "emulation check: a gradient kernel's descriptor carries a fused neuron");
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
  p->weights.assign(w, w + p->out * p->in);
  const float* b = [ds biasTerms];
  if (b != nullptr) p->bias.assign(b, b + p->out);
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

// B images of 1 x 1 x C as [B, C] floats.
std::vector<float> ReadRows(MPSImage* image) {
  const int64_t B = [image numberOfImages], C = [image featureChannels];
  std::vector<float> out(static_cast<size_t>(B * C));
  const uint8_t* src = [image gpuBytes];
  for (int64_t n = 0; n < B; ++n)
    for (int64_t c = 0; c < C; ++c)
      std::memcpy(&out[n * C + c], src + [image indexOfImage:n channel:c row:0 column:0] * sizeof(float),
                  sizeof(float));
  return out;
}

// [B, C] floats into B images of 1 x 1 x C, zeroing the padding channels.
void WriteRows(MPSImage* image, const std::vector<float>& in) {
  const int64_t B = [image numberOfImages], C = [image featureChannels];
  uint8_t* dst = [image gpuBytes];
  for (int64_t n = 0; n < B; ++n) {
    for (int64_t c = 0; c < C; ++c)
      std::memcpy(dst + [image indexOfImage:n channel:c row:0 column:0] * sizeof(float), &in[n * C + c],
                  sizeof(float));
    for (int64_t c = C; c % 4 != 0; ++c)
      std::memset(dst + [image indexOfImage:n channel:c row:0 column:0] * sizeof(float), 0, sizeof(float));
  }
}

tfmps::dense::CpuContext SerialCpu(std::vector<float>* workspace, int64_t floats) {
  workspace->assign(static_cast<size_t>(std::max<int64_t>(floats, 1)), 0.0f);
  tfmps::dense::CpuContext cpu;
  cpu.parallel = [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    if (total > 0) fn(0, total);
  };
  cpu.threads = 1;
  cpu.workspace = workspace->data();
  cpu.workspace_size = static_cast<int64_t>(workspace->size());
  return cpu;
}

// Apple's [No][Ni] -> the dense backend's [K = Ni][N = No].
std::vector<float> ToKernel(const FcParams& p) {
  std::vector<float> k(p.weights.size());
  for (int64_t o = 0; o < p.out; ++o)
    for (int64_t i = 0; i < p.in; ++i) k[i * p.out + o] = p.weights[o * p.in + i];
  return k;
}

// The 1 x 1 geometry the fake emulates; aborts otherwise.
void CheckGeometry(const char* method, const FcParams& p, MPSOffset offset, MPSImage* source, MPSImage* dest) {
  if ([source width] != 1 || [source height] != 1) {
    EmuValidationFailure(method, "emulation limit: a " + S([source width]) + " x " + S([source height]) +
                                     " source (the fake emulates 1 x 1 sources; Apple: kernelWidth == "
                                     "source.width, kernelHeight == source.height)");
  }
  if ([dest width] != 1 || [dest height] != 1) {
    EmuValidationFailure(method, "the destination must be 1 x 1 (Apple: clipRect.size 1 x 1), got " +
                                     S([dest width]) + " x " + S([dest height]));
  }
  if (static_cast<int64_t>([source featureChannels]) != p.in) {
    EmuValidationFailure(method, "sourceImage has " + S([source featureChannels]) +
                                     " feature channels; inputFeatureChannels is " + S(p.in));
  }
  if (static_cast<int64_t>([dest featureChannels]) != p.out) {
    EmuValidationFailure(method, "destinationImage has " + S([dest featureChannels]) +
                                     " feature channels; outputFeatureChannels is " + S(p.out));
  }
  if ([source numberOfImages] != [dest numberOfImages]) {
    EmuValidationFailure(method, "emulation limit: the source has " + S([source numberOfImages]) +
                                     " images, the destination " + S([dest numberOfImages]));
  }
  if (offset.x != 0 || offset.y != 0 || offset.z != 0) {
    EmuValidationFailure(method, "emulation limit: an offset other than (0, 0, 0)");
  }
}

}  // namespace

@implementation MPSCNNFullyConnected {
  FcParams _fc;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device weights:(id<MPSCNNConvolutionDataSource>)weights {
  const char* method = "-[MPSCNNFullyConnected initWithDevice:weights:]";
  if (weights == nil) EmuValidationFailure(method, "weights (the data source) is nil");
  self = [super initEmuWithDevice:device];
  if (self == nil) return nil;
  if (!LoadFc(method, weights, /*training=*/false, &_fc)) return nil;
  // MPSCNNConvolution's accessors (its ivar, mirrored above): Half, as the convolution's fake.
  [self setAccumulatorPrecisionOption:MPSNNConvolutionAccumulatorPrecisionOptionHalf];
  _edgeMode = MPSImageEdgeModeZero;
  return self;
}

- (NSUInteger)kernelWidth { return 1; }
- (NSUInteger)kernelHeight { return 1; }
- (NSUInteger)inputFeatureChannels { return static_cast<NSUInteger>(_fc.in); }
- (NSUInteger)outputFeatureChannels { return static_cast<NSUInteger>(_fc.out); }
- (NSUInteger)groups { return 1; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSCNNFullyConnected encodeToCommandBuffer:sourceImage:destinationImage:]";
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  CheckFloatImage(method, "sourceImage", sourceImage, [self device]);
  CheckFloatImage(method, "destinationImage", destinationImage, [self device]);
  if (sourceImage == destinationImage) EmuValidationFailure(method, "emulation check: the source and destination are one image");
  CheckGeometry(method, _fc, _offset, sourceImage, destinationImage);
  if ([self accumulatorPrecisionOption] != MPSNNConvolutionAccumulatorPrecisionOptionFloat) {
    EmuValidationFailure(method, "emulation limit: accumulatorPrecisionOption is Half; the fake sums in float32 "
                                 "only: set MPSNNConvolutionAccumulatorPrecisionOptionFloat");
  }
  const std::vector<float> kernel = ToKernel(_fc);
  const std::vector<float> bias = _fc.bias;
  const bool relu = _fc.relu;
  const int64_t in = _fc.in, out = _fc.out;
  MPSImage* src = sourceImage;
  MPSImage* dst = destinationImage;
  [dst beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [kernel, bias, relu, in, out, src, dst] {
        const std::vector<float> x = ReadRows(src);
        tfmps::dense::DenseDims d;
        d.rows = static_cast<int64_t>([src numberOfImages]);
        d.in = in;
        d.out = out;
        tfmps::dense::DenseConfig c;
        c.activation = relu ? tfmps::dense::Activation::kRelu : tfmps::dense::Activation::kNone;
        std::vector<float> y(static_cast<size_t>(d.rows * out));
        std::vector<float> workspace;
        const tfmps::dense::CpuContext cpu = SerialCpu(&workspace, tfmps::dense::DenseForwardCpuWorkspace(d, c));
        tfmps::dense::DenseForwardArgs a{x.data(), kernel.data(), bias.empty() ? nullptr : bias.data(), y.data()};
        tfmps::dense::DenseForwardCpu(d, c, a, cpu);
        WriteRows(dst, y);
      },
      [dst] { [dst endGpuWrite]; });
}

- (MPSCNNConvolutionGradientState*)resultStateForSourceImage:(MPSImage*)sourceImage
                                                sourceStates:(NSArray<MPSState*>*)sourceStates
                                            destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSCNNFullyConnected resultStateForSourceImage:sourceStates:destinationImage:]";
  CheckFloatImage(method, "sourceImage", sourceImage, [self device]);
  CheckFloatImage(method, "destinationImage", destinationImage, [self device]);
  CheckGeometry(method, _fc, _offset, sourceImage, destinationImage);
  if (EmuInitShouldFail("MPSCNNConvolutionGradientState")) return nil;
  MPSCNNConvolutionGradientState* state = [[MPSCNNConvolutionGradientState alloc] init];
  if (state == nil) return nil;
  state->_convolution = self;
  state->_gradientForWeights = [[self device] newBufferWithLength:static_cast<size_t>(_fc.in * _fc.out) * sizeof(float)
                                                          options:MTLResourceStorageModePrivate];
  state->_gradientForBiases = [[self device] newBufferWithLength:static_cast<size_t>(_fc.out) * sizeof(float)
                                                         options:MTLResourceStorageModePrivate];
  if (state->_gradientForWeights == nil || state->_gradientForBiases == nil) return nil;
  return state;
}

@end

@implementation MPSCNNFullyConnectedGradient {
  FcParams _fc;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device weights:(id<MPSCNNConvolutionDataSource>)weights {
  const char* method = "-[MPSCNNFullyConnectedGradient initWithDevice:weights:]";
  if (weights == nil) EmuValidationFailure(method, "weights (the data source) is nil");
  self = [super initEmuWithDevice:device];
  if (self == nil) return nil;
  if (!LoadFc(method, weights, /*training=*/true, &_fc)) return nil;
  // MPSCNNConvolutionGradient's accessor (its ivar, mirrored above): Apple's default.
  [self setGradientOption:MPSCNNConvolutionGradientOptionAll];
  return self;
}

- (NSUInteger)sourceGradientFeatureChannels { return static_cast<NSUInteger>(_fc.out); }
- (NSUInteger)sourceImageFeatureChannels { return static_cast<NSUInteger>(_fc.in); }
- (NSUInteger)groups { return 1; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
               sourceGradient:(MPSImage*)sourceGradient
                  sourceImage:(MPSImage*)sourceImage
                gradientState:(MPSState*)gradientState
          destinationGradient:(MPSImage*)destinationGradient {
  const char* method =
      "-[MPSCNNFullyConnectedGradient encodeToCommandBuffer:sourceGradient:sourceImage:gradientState:"
      "destinationGradient:]";
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  if (![gradientState isKindOfClass:[MPSCNNConvolutionGradientState class]]) {
    EmuValidationFailure(method, "gradientState is not an MPSCNNConvolutionGradientState");
  }
  MPSCNNConvolutionGradientState* state = (MPSCNNConvolutionGradientState*)gradientState;
  MPSCNNConvolution* forward = state->_convolution;
  if (![forward isKindOfClass:[MPSCNNFullyConnected class]]) {
    EmuValidationFailure(method, "emulation check: the gradient state is not an MPSCNNFullyConnected's");
  }
  if (static_cast<int64_t>([forward inputFeatureChannels]) != _fc.in ||
      static_cast<int64_t>([forward outputFeatureChannels]) != _fc.out) {
    EmuValidationFailure(method, "emulation check: the gradient kernel's data source describes another layer than "
                                 "the gradient state's");
  }
  CheckFloatImage(method, "sourceGradient", sourceGradient, [self device]);
  CheckFloatImage(method, "sourceImage", sourceImage, [self device]);
  CheckFloatImage(method, "destinationGradient", destinationGradient, [self device]);
  const int options = static_cast<int>([self gradientOption]);
  if ((options & 3) == 0 || (options & ~3) != 0) {
    EmuValidationFailure(method, "gradientOption " + S(options) + " is not a valid MPSCNNConvolutionGradientOption");
  }
  if ([self kernelOffsetX] != 0 || [self kernelOffsetY] != 0) {
    EmuValidationFailure(method, "emulation limit: kernelOffsetX/Y are not 0");
  }
  // The forward's geometry: sourceImage is its source, sourceGradient its destination's
  // size, destinationGradient its source's size.
  CheckGeometry(method, _fc, MPSOffset{0, 0, 0}, sourceImage, sourceGradient);
  CheckGeometry(method, _fc, MPSOffset{0, 0, 0}, destinationGradient, sourceGradient);
  if (destinationGradient == sourceGradient || destinationGradient == sourceImage) {
    EmuValidationFailure(method, "emulation check: destinationGradient is also a source");
  }
  const bool data = (options & MPSCNNConvolutionGradientOptionGradientWithData) != 0;
  const bool weights = (options & MPSCNNConvolutionGradientOptionGradientWithWeightsAndBias) != 0;
  const std::vector<float> kernel = data ? ToKernel(_fc) : std::vector<float>();
  const int64_t in = _fc.in, out = _fc.out;
  MPSImage* dy_image = sourceGradient;
  MPSImage* x_image = sourceImage;
  MPSImage* dx_image = destinationGradient;
  id<MTLBuffer> dw_buffer = state->_gradientForWeights;
  id<MTLBuffer> db_buffer = state->_gradientForBiases;
  if (data) [dx_image beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [data, weights, kernel, in, out, dy_image, x_image, dx_image, dw_buffer, db_buffer] {
        tfmps::dense::DenseDims d;
        d.rows = static_cast<int64_t>([dy_image numberOfImages]);
        d.in = in;
        d.out = out;
        const tfmps::dense::DenseConfig c;  // identity: the gradient kernels carry no neuron
        const std::vector<float> dy = ReadRows(dy_image);
        std::vector<float> workspace;
        if (data) {
          std::vector<float> dx(static_cast<size_t>(d.rows * in));
          const tfmps::dense::CpuContext cpu =
              SerialCpu(&workspace, tfmps::dense::DenseBackpropInputCpuWorkspace(d, c));
          tfmps::dense::DenseBackpropInputArgs a{dy.data(), kernel.data(), nullptr, dx.data()};
          tfmps::dense::DenseBackpropInputCpu(d, c, a, cpu);
          WriteRows(dx_image, dx);
        }
        if (weights) {
          const std::vector<float> x = ReadRows(x_image);
          std::vector<float> dw(static_cast<size_t>(in * out)), db(static_cast<size_t>(out));
          const tfmps::dense::CpuContext cpu =
              SerialCpu(&workspace, tfmps::dense::DenseBackpropKernelCpuWorkspace(d, c, /*bias=*/true));
          tfmps::dense::DenseBackpropKernelArgs a{x.data(), dy.data(), nullptr, dw.data(), db.data()};
          tfmps::dense::DenseBackpropKernelCpu(d, c, a, cpu);
          // [K][M] -> the data source's layout [M][1][1][K] (Apple: the state's weight
          // gradient is laid out as the weights).
          float* w = static_cast<float*>(EmuBufferBytes(dw_buffer));
          for (int64_t o = 0; o < out; ++o)
            for (int64_t i = 0; i < in; ++i) w[o * in + i] = dw[i * out + o];
          std::memcpy(EmuBufferBytes(db_buffer), db.data(), db.size() * sizeof(float));
        }
      },
      [data, dx_image] {
        if (data) [dx_image endGpuWrite];
      });
}

@end
