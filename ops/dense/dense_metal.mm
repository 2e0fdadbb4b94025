// Metal backend of the fully connected layer (MPSCNNFullyConnected and its gradient) (see
// dense_metal.h). Built with ARC. Nothing here has run on a Mac yet: it is type-checked
// against the project's declarations of Apple's API and executed on Linux against the
// Metal emulation (emulation/mps/mps_cnn_fc.mm).
//
// One command buffer per call (the stream's, with a thread target), as norm_metal.mm:
//   x [N, K] --MPSMatrixCopyToImage--> N images 1 x 1 x K --MPSCNNFullyConnected-->
//   N images 1 x 1 x M --MPSImageCopyToMatrix--> y [N, M]
// Apple (MPSCNNFullyConnected): kernelWidth == source.width, kernelHeight ==
// source.height, a 1 x 1 destination, Weights[No][source.width][source.height][Ni].
// With 1 x 1 sources that is [M][K], W's transpose (KernelToFcWeights); the width-
// before-height order of wider sources never arises here (x is always 1 x 1 x K).
// Bias: the data source's -biasTerms ([M] floats). Relu: the descriptor's fused neuron
// MPSCNNNeuronTypeReLU with a = 0 (Apple: f(x) = x if x >= 0, a * x if x < 0), which is
// dense.h's relu up to the sign of a zero result (x < 0 gives 0 * x = -0 where the CPU
// backend writes +0; NaN stays NaN in both) -- the convolution's Metal backend fuses it
// the same way.
//
// kUnsupported (the CPU backend runs): float16 data or accumulation; no rows, features
// or outputs (the CPU backend's zero/bias-only cases); N * ceil(K / 4) or
// N * ceil(M / 4) beyond Metal's 2048 texture-array slices; x or y not in a registered,
// 16-byte aligned buffer; in the gradients also relu (dense.h's mask is y > 0 while the
// gradient kernels take no fused neuron: the caller would have to mask dy first).
//
// Gradients (MPSCNNFullyConnectedGradient, an MPSCNNConvolutionGradient): a forward
// MPSCNNFullyConnected and the gradient kernel over one data source, the state from the
// forward's -resultStateForSourceImage:sourceStates:destinationImage: (the forward is
// not encoded: the state carries the sizes). dx: GradientWithData (x's image only sizes
// the state). dW, db: GradientWithWeightsAndBias over zero weights (not read), the
// state's gradientForWeights ([M][1][1][K], the data source's layout) and
// gradientForBiases blitted to a shared buffer, read after the wait, [M][K] -> [K][M].
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ops/common/metal_context.h"
#include "ops/common/metal_images.h"
#include "ops/dense/dense_metal.h"

// The weights of one fully connected layer over the dense kernel W [K][M] and bias [M]
// (or NULL): -load repacks W into Apple's [M][1][1][K]; what -weights returns stays valid
// until -purge. Apple's contract: -load before -weights/-biasTerms, balanced by -purge.
@interface TFMPSDenseDataSource : NSObject <MPSCNNConvolutionDataSource>
- (instancetype)initWithDescriptor:(MPSCNNConvolutionDescriptor*)descriptor
                            kernel:(const float*)kernel
                              bias:(const float*)bias
                                in:(int64_t)in
                               out:(int64_t)out;
@end

@implementation TFMPSDenseDataSource {
  MPSCNNConvolutionDescriptor* _descriptor;
  const float* _kernel;
  const float* _bias;
  int64_t _in, _out;
  std::vector<float> _weights;  // [M][K] while loaded
}

- (instancetype)initWithDescriptor:(MPSCNNConvolutionDescriptor*)descriptor
                            kernel:(const float*)kernel
                              bias:(const float*)bias
                                in:(int64_t)in
                               out:(int64_t)out {
  self = [super init];
  if (self == nil) return nil;
  _descriptor = descriptor;
  _kernel = kernel;
  _bias = bias;
  _in = in;
  _out = out;
  return self;
}

- (MPSDataType)dataType {
  return MPSDataTypeFloat32;
}

- (MPSCNNConvolutionDescriptor*)descriptor {
  return _descriptor;
}

- (BOOL)load {
  _weights.resize(static_cast<size_t>(_in * _out));
  tfmps::dense::KernelToFcWeights(_in, _out, _kernel, _weights.data());
  return YES;
}

- (void)purge {
  std::vector<float>().swap(_weights);
}

- (void*)weights {
  return _weights.data();
}

// MPS reads, never writes, these.
- (float*)biasTerms {
  return const_cast<float*>(_bias);
}

- (NSString*)label {
  return @"tf-mps dense weights";
}

- (id)copyWithZone:(NSZone*)zone {
  return [[TFMPSDenseDataSource alloc] initWithDescriptor:_descriptor kernel:_kernel bias:_bias in:_in out:_out];
}

@end

namespace tfmps {
namespace dense {
namespace {

using metal::kMaxArraySlices;
using metal::Operands;
using metal::ToImage;
using metal::ToMatrix;

std::string Str(int64_t v) { return std::to_string(v); }

// The data source reads W and the bias on the CPU: GPU work queued on this thread's
// stream must be done first.
BackendStatus WaitForStream(const std::string& op) {
  if (metal::ThreadTarget() == nullptr) return BackendStatus::Ok();
  return metal::SubmitAndWait(op, [](id<MTLCommandBuffer>) {});
}

// "" or why these dims cannot run on MPSCNNFullyConnected.
std::string Unsupported(const DenseDims& d, const DenseConfig& c) {
  if (c.dtype != DType::kFloat32) return "float16 data (float32 only)";
  if (c.accumulator != Accumulator::kFloat32) return "float16 accumulation (float32 only)";
  if (d.rows == 0 || d.in == 0 || d.out == 0) return "no rows, features or outputs";
  const int64_t slices = d.rows * ((std::max(d.in, d.out) + 3) / 4);
  if (slices > kMaxArraySlices) {
    return "images of " + Str(slices) + " texture slices (Metal's limit is " + Str(kMaxArraySlices) + ")";
  }
  return "";
}

}  // namespace

BackendStatus DenseForwardFcMetal(const DenseDims& d, const DenseConfig& c, const DenseForwardArgs& a) {
  const std::string op = "DenseForwardFcMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  const std::string why = Unsupported(d, c);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* x = ops.Matrix("x", a.x, d.rows, d.in);
    MPSMatrix* y = ops.Matrix("y", a.y, d.rows, d.out);
    MPSImage* xi = ops.Image("x", d.rows, d.in);
    MPSImage* yi = ops.Image("y", d.rows, d.out);
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
    MPSCNNConvolutionDescriptor* desc = ops.Kernel(
        [MPSCNNConvolutionDescriptor cnnConvolutionDescriptorWithKernelWidth:1
                                                                kernelHeight:1
                                                        inputFeatureChannels:static_cast<NSUInteger>(d.in)
                                                       outputFeatureChannels:static_cast<NSUInteger>(d.out)],
        "MPSCNNConvolutionDescriptor cnnConvolutionDescriptorWithKernelWidth:");
    if (!ops.status.ok()) return ops.status;
    if (c.activation == Activation::kRelu) {
      MPSNNNeuronDescriptor* relu = [MPSNNNeuronDescriptor cnnNeuronDescriptorWithType:MPSCNNNeuronTypeReLU a:0.0f];
      if (relu == nil) return BackendStatus::Internal(op + ": MPSNNNeuronDescriptor cnnNeuronDescriptorWithType: returned nil");
      desc.fusedNeuronDescriptor = relu;
    }
    BackendStatus st = WaitForStream(op);
    if (!st.ok()) return st;
    TFMPSDenseDataSource* source = [[TFMPSDenseDataSource alloc] initWithDescriptor:desc
                                                                             kernel:static_cast<const float*>(a.kernel)
                                                                               bias:static_cast<const float*>(a.bias)
                                                                                 in:d.in
                                                                                out:d.out];
    MPSCNNFullyConnected* fc = [[MPSCNNFullyConnected alloc] initWithDevice:metal::Device() weights:source];
    if (fc == nil) return BackendStatus::Internal(op + ": MPSCNNFullyConnected initWithDevice:weights: returned nil");
    fc.accumulatorPrecisionOption = MPSNNConvolutionAccumulatorPrecisionOptionFloat;
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      [to_image encodeToCommandBuffer:cb sourceMatrix:x destinationImage:xi];
      [fc encodeToCommandBuffer:cb sourceImage:xi destinationImage:yi];
      [to_matrix encodeToCommandBuffer:cb sourceImage:yi destinationMatrix:y];
    });
  }
}


namespace {

// The forward kernel and its gradient kernel over one data source (W, or zeros), and the
// gradient state of a forward from xi to yi. Internal on the first nil.
struct Gradient {
  MPSCNNFullyConnected* fc = nil;
  MPSCNNFullyConnectedGradient* grad = nil;
  MPSCNNConvolutionGradientState* state = nil;
};

BackendStatus MakeGradient(const std::string& op, const DenseDims& d, const float* kernel, MPSImage* xi, MPSImage* yi,
                           MPSCNNConvolutionGradientOption option, Gradient* g) {
  MPSCNNConvolutionDescriptor* desc =
      [MPSCNNConvolutionDescriptor cnnConvolutionDescriptorWithKernelWidth:1
                                                              kernelHeight:1
                                                      inputFeatureChannels:static_cast<NSUInteger>(d.in)
                                                     outputFeatureChannels:static_cast<NSUInteger>(d.out)];
  if (desc == nil) return BackendStatus::Internal(op + ": MPSCNNConvolutionDescriptor returned nil");
  TFMPSDenseDataSource* source = [[TFMPSDenseDataSource alloc] initWithDescriptor:desc
                                                                           kernel:kernel
                                                                             bias:nullptr
                                                                               in:d.in
                                                                              out:d.out];
  g->fc = [[MPSCNNFullyConnected alloc] initWithDevice:metal::Device() weights:source];
  if (g->fc == nil) return BackendStatus::Internal(op + ": MPSCNNFullyConnected initWithDevice:weights: returned nil");
  g->fc.accumulatorPrecisionOption = MPSNNConvolutionAccumulatorPrecisionOptionFloat;
  g->grad = [[MPSCNNFullyConnectedGradient alloc] initWithDevice:metal::Device() weights:source];
  if (g->grad == nil) {
    return BackendStatus::Internal(op + ": MPSCNNFullyConnectedGradient initWithDevice:weights: returned nil");
  }
  g->grad.gradientOption = option;
  g->state = [g->fc resultStateForSourceImage:xi sourceStates:nil destinationImage:yi];
  if (g->state == nil) return BackendStatus::Internal(op + ": resultStateForSourceImage: returned nil");
  return BackendStatus::Ok();
}

std::string GradientUnsupported(const DenseDims& d, const DenseConfig& c) {
  if (c.activation != Activation::kNone) {
    return "relu (its mask is not MPS's: the gradient kernels take no fused neuron)";
  }
  return Unsupported(d, c);
}

}  // namespace

BackendStatus DenseBackpropInputFcMetal(const DenseDims& d, const DenseConfig& c, const DenseBackpropInputArgs& a) {
  const std::string op = "DenseBackpropInputFcMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  const std::string why = GradientUnsupported(d, c);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* dy = ops.Matrix("dy", a.dy, d.rows, d.out);
    MPSMatrix* dx = ops.Matrix("dx", a.dx, d.rows, d.in);
    MPSImage* dyi = ops.Image("dy", d.rows, d.out);
    MPSImage* dxi = ops.Image("dx", d.rows, d.in);
    // The forward's source, for the gradient state's sizes (not read for GradientWithData).
    MPSImage* xi = ops.Image("x (sizes only)", d.rows, d.in);
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
    if (!ops.status.ok()) return ops.status;
    BackendStatus st = WaitForStream(op);  // the data source reads W on the CPU
    if (!st.ok()) return st;
    Gradient g;
    st = MakeGradient(op, d, static_cast<const float*>(a.kernel), xi, dyi,
                      MPSCNNConvolutionGradientOptionGradientWithData, &g);
    if (!st.ok()) return st;
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      [to_image encodeToCommandBuffer:cb sourceMatrix:dy destinationImage:dyi];
      [g.grad encodeToCommandBuffer:cb sourceGradient:dyi sourceImage:xi gradientState:g.state destinationGradient:dxi];
      [to_matrix encodeToCommandBuffer:cb sourceImage:dxi destinationMatrix:dx];
    });
  }
}

BackendStatus DenseBackpropKernelFcMetal(const DenseDims& d, const DenseConfig& c, const DenseBackpropKernelArgs& a) {
  const std::string op = "DenseBackpropKernelFcMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  const std::string why = GradientUnsupported(d, c);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  const size_t w_bytes = static_cast<size_t>(d.in * d.out) * sizeof(float);
  const size_t b_bytes = static_cast<size_t>(d.out) * sizeof(float);
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* x = ops.Matrix("x", a.x, d.rows, d.in);
    MPSMatrix* dy = ops.Matrix("dy", a.dy, d.rows, d.out);
    MPSImage* xi = ops.Image("x", d.rows, d.in);
    MPSImage* dyi = ops.Image("dy", d.rows, d.out);
    // Not written with GradientWithWeightsAndBias, but the encode call takes one.
    MPSImage* dxi = ops.Image("dx (unused)", d.rows, d.in);
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    if (!ops.status.ok()) return ops.status;
    id<MTLBuffer> staged = [metal::Device() newBufferWithLength:w_bytes + b_bytes options:MTLResourceStorageModeShared];
    if (staged == nil) return BackendStatus::Internal(op + ": newBufferWithLength: returned nil");
    // Zero weights: the gradient with respect to the weights and bias does not read them.
    const std::vector<float> zeros(static_cast<size_t>(d.in * d.out), 0.0f);
    Gradient g;
    BackendStatus st = MakeGradient(op, d, zeros.data(), xi, dyi,
                                    MPSCNNConvolutionGradientOptionGradientWithWeightsAndBias, &g);
    if (!st.ok()) return st;
    id<MTLBuffer> dw = g.state.gradientForWeights;
    id<MTLBuffer> db = g.state.gradientForBiases;
    if (dw == nil || [dw length] < w_bytes || db == nil || [db length] < b_bytes) {
      return BackendStatus::Internal(op + ": the gradient state has no gradient buffer of the layer's size");
    }
    // The host reads the result right after: SubmitAndWait.
    st = metal::SubmitAndWait(op, [&](id<MTLCommandBuffer> cb) {
      [to_image encodeToCommandBuffer:cb sourceMatrix:x destinationImage:xi];
      [to_image encodeToCommandBuffer:cb sourceMatrix:dy destinationImage:dyi];
      [g.grad encodeToCommandBuffer:cb sourceGradient:dyi sourceImage:xi gradientState:g.state destinationGradient:dxi];
      id<MTLBlitCommandEncoder> blit = [cb blitCommandEncoder];
      [blit copyFromBuffer:dw sourceOffset:0 toBuffer:staged destinationOffset:0 size:w_bytes];
      [blit copyFromBuffer:db sourceOffset:0 toBuffer:staged destinationOffset:w_bytes size:b_bytes];
      [blit endEncoding];
    });
    if (!st.ok()) return st;
    const float* out = static_cast<const float*>([staged contents]);
    FcWeightsToKernel(d.in, d.out, out, static_cast<float*>(a.dkernel));
    if (a.dbias != nullptr) std::memcpy(a.dbias, out + d.in * d.out, b_bytes);
    return BackendStatus::Ok();
  }
}

}  // namespace dense
}  // namespace tfmps
