// Metal backend of batch and instance normalization (see norm_metal.h). Built with ARC.
// Nothing here has run on a Mac yet: it is type-checked against the project's
// declarations of Apple's API and executed on Linux against the Metal emulation
// (emulation/mps/mps_cnn_norm.mm, docs/metal-emulation.md).
//
// One command buffer per call (the stream's, with a thread target), as conv_metal.mm:
//   NHWC buffer --MPSMatrixCopyToImage--> MPSImage --MPSCNNBatchNormalization-->
//   MPSImage --MPSImageCopyToMatrix--> NHWC buffer
// Batch norm reduces over every row of x viewed as [R, C], so any factorization
// R = N * H * W gives the same result: the image is N images of H x W pixels with
// W the largest divisor of R within Metal's texture side (16384), H likewise of R / W,
// and N the rest (at most 2048 / ceil(C/4) texture slices, else kUnsupported).
//
// Batch norm inference (a.mean_in, a.var_in given): Apple documents
//   out = (in - mean[c]) * gamma[c] / sqrt(variance[c] + epsilon) + beta[c]
// (MPSCNNBatchNormalization(3)), the op's formula (norm.h: y = (x - mean) * gamma *
// inv_std + beta, inv_std = 1 / sqrt(variance + epsilon)) up to float32 rounding. The
// kernel's epsilon property is set to the op's epsilon explicitly (and the data source
// answers -epsilon with it too), since Apple's pages do not state the default. The
// statistics outputs are written on the CPU after the stream's wait: mean and variance
// are the given ones, inv_std = 1 / sqrt(variance + epsilon) computed as the CPU backend
// does (in double, rounded once), so those are bit-identical to the CPU backend.
//
// Batch norm training (no mean_in): MPSCNNBatchNormalizationStatistics writes the batch
// statistics into an MPSCNNBatchNormalizationState (made by the kernel's
// -resultStateForSourceImage:...), the kernel's state encode normalizes with them. Apple
// says the statistics are those of Ioffe & Szegedy (arXiv 1502.03167v3), whose training
// transform uses the biased batch variance, the op's; Apple's pages never write the
// formula (flag for a Mac run). The state's mean and variance buffers are blitted into a
// shared staging buffer in the same command buffer; the call waits (the host must read
// them: inv_std = 1 / sqrt(variance + epsilon) is formed here as the CPU backend does,
// from the float32 variance) and writes the three statistics outputs. The moving
// averages are not the op's (tf_mps/ops/norm.py: Keras updates them from batch_mean and
// batch_variance, on whatever device runs those ops).
//
// Batch norm training gradient: MPSCNNBatchNormalizationStatisticsGradient (the
// gradients for gamma and beta into the state) then MPSCNNBatchNormalizationGradient
// (dx), both without a fused neuron; the state's gradientForGamma / gradientForBeta are
// blitted into the op's outputs. MPS's dx is the gradient through the batch statistics
// (the paper's), the op's with zero mean/variance gradients (norm.h: gm = gv = 0): the
// host reads mean_backprop and variance_backprop after the stream's wait and declines
// when any is nonzero. The op's statistics (mean, inv_std as the forward produced them)
// reach the state through the data source: Apple documents its mean and variance as the
// values "with which to initialize the state for a subsequent batch normalization";
// variance = 1 / inv_std^2 with epsilon 0 makes MPS's 1 / sqrt(variance + epsilon)
// inv_std up to float32 rounding. No MPSCNNBatchNormalizationStatistics encode runs:
// it would replace them with statistics recomputed from x with an epsilon the gradient
// op does not have. Apple's gradient pages say the state was "previously updated using"
// the statistics kernel and the source images: that a data-source-initialized state
// serves is the one assumption here a Mac run must confirm.
//
// kUnsupported (the CPU backend runs): float16 data; instance norm (not written yet);
// the inference gradient (MPS's gradient kernels are the training one); nonzero
// gradients of the statistics outputs; inv_std not positive and finite; no rows (the
// empty-statistics case); images beyond Metal's limits; x, y, dy, dx not in a
// registered, 16-byte aligned buffer (dgamma, dbeta: not in a registered buffer).
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/common/metal_context.h"
#include "ops/norm/norm_metal.h"

// The per-channel parameters of one batch normalization, over the op's arrays (read on
// the CPU by the kernel's initializer). mean and variance NULL: none (training).
@interface TFMPSBatchNormDataSource : NSObject <MPSCNNBatchNormalizationDataSource>
- (instancetype)initWithChannels:(NSUInteger)channels
                           gamma:(const float*)gamma
                            beta:(const float*)beta
                            mean:(const float*)mean
                        variance:(const float*)variance
                         epsilon:(float)epsilon;
@end

@implementation TFMPSBatchNormDataSource {
  NSUInteger _channels;
  const float* _gamma;
  const float* _beta;
  const float* _mean;
  const float* _variance;
  float _epsilon;
}

- (instancetype)initWithChannels:(NSUInteger)channels
                           gamma:(const float*)gamma
                            beta:(const float*)beta
                            mean:(const float*)mean
                        variance:(const float*)variance
                         epsilon:(float)epsilon {
  self = [super init];
  if (self == nil) return nil;
  _channels = channels;
  _gamma = gamma;
  _beta = beta;
  _mean = mean;
  _variance = variance;
  _epsilon = epsilon;
  return self;
}

- (NSUInteger)numberOfFeatureChannels {
  return _channels;
}

// MPS reads, never writes, these.
- (float*)gamma {
  return const_cast<float*>(_gamma);
}
- (float*)beta {
  return const_cast<float*>(_beta);
}
- (float*)mean {
  return const_cast<float*>(_mean);
}
- (float*)variance {
  return const_cast<float*>(_variance);
}
- (float)epsilon {
  return _epsilon;
}

// The arrays are the op's own: nothing to bring in or drop.
- (BOOL)load {
  return YES;
}
- (void)purge {
}

- (NSString*)label {
  return @"tf-mps batch norm parameters";
}

- (id)copyWithZone:(NSZone*)zone {
  return [[TFMPSBatchNormDataSource alloc] initWithChannels:_channels
                                                      gamma:_gamma
                                                       beta:_beta
                                                       mean:_mean
                                                   variance:_variance
                                                    epsilon:_epsilon];
}

@end

namespace tfmps {
namespace norm {
namespace {

constexpr int64_t kMaxArraySlices = 2048;  // Metal: layers of a 2D texture array
constexpr int64_t kMaxTextureSide = 16384;

std::string Str(int64_t v) { return std::to_string(v); }

// n images of h x w pixels of c channels.
struct ImageShape {
  int64_t n = 0, h = 0, w = 0, c = 0;
};

int64_t LargestDivisorAtMost(int64_t value, int64_t limit) {
  for (int64_t d = std::min(value, limit); d > 1; --d) {
    if (value % d == 0) return d;
  }
  return 1;
}

// x [G, R, C] as images: `groups` fixed as the image count times something (instance
// norm: one image per group; batch norm: any). "" or why not.
std::string ImagesOf(const NormShape& s, bool instance, ImageShape* im) {
  im->c = s.channels;
  im->w = LargestDivisorAtMost(s.rows, kMaxTextureSide);
  const int64_t rest = s.rows / im->w;
  if (instance) {
    im->h = rest;
    im->n = s.groups;
  } else {
    im->h = LargestDivisorAtMost(rest, kMaxTextureSide);
    im->n = rest / im->h;
  }
  if (im->h > kMaxTextureSide) return "an image side of " + Str(im->h) + " (Metal's limit is 16384)";
  const int64_t slices = im->n * ((im->c + 3) / 4);
  if (slices > kMaxArraySlices) {
    return "an image of " + Str(slices) + " texture slices (Metal's limit is " + Str(kMaxArraySlices) + ")";
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
  return [[MPSImage alloc] initWithDevice:metal::Device() imageDescriptor:d];
}

// An NHWC tensor as an MPSMatrix of n rows (images) of h*w*c floats over its buffer.
// nil with *found false: not in a registered aligned buffer; nil with *found true: MPS
// returned nil.
MPSMatrix* Rows(const void* p, const ImageShape& s, bool* found) {
  const size_t row_bytes = static_cast<size_t>(s.h * s.w * s.c) * sizeof(float);
  const metal::BufferRef ref = metal::FindAlignedBuffer(p, static_cast<size_t>(s.n) * row_bytes);
  *found = ref.found();
  if (!ref.found()) return nil;
  MPSMatrixDescriptor* d = [MPSMatrixDescriptor matrixDescriptorWithRows:static_cast<NSUInteger>(s.n)
                                                                 columns:static_cast<NSUInteger>(s.h * s.w * s.c)
                                                                rowBytes:row_bytes
                                                                dataType:MPSDataTypeFloat32];
  if (d == nil) return nil;
  return [[MPSMatrix alloc] initWithBuffer:metal::BufferOf(ref) offset:ref.offset descriptor:d];
}

// The matrices and images of one call; Internal/Unsupported on the first failure.
struct Operands {
  std::string op;
  BackendStatus status = BackendStatus::Ok();

  MPSMatrix* Matrix(const char* name, const void* p, const ImageShape& s) {
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
  MPSImage* Image(const char* name, const ImageShape& s) {
    if (!status.ok()) return nil;
    MPSImage* image = MakeImage(s);
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

// The data source reads gamma, beta and the statistics on the CPU, and the statistics
// outputs are written there: GPU work queued on this thread's stream must be done first.
BackendStatus WaitForStream(const std::string& op) {
  if (metal::ThreadTarget() == nullptr) return BackendStatus::Ok();
  return metal::SubmitAndWait(op, [](id<MTLCommandBuffer>) {});
}

// 1 / sqrt(variance + epsilon) as the CPU backend forms it (in double, rounded once).
float InvStd(float variance, float epsilon) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(variance) + epsilon));
}

}  // namespace

BackendStatus NormForwardMetal(const NormShape& s, const ForwardArgs& a, bool instance) {
  const std::string op = instance ? "InstanceNormForwardMetal" : "BatchNormForwardMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  if (a.dtype != DataType::kFloat32) return BackendStatus::Unsupported(op + ": float16 data (float32 only)");
  if (instance) return BackendStatus::Unsupported(op + ": instance norm is not on Metal yet");
  if (s.rows == 0 || s.groups != 1 || s.channels == 0) {
    return BackendStatus::Unsupported(op + ": no rows (the CPU backend writes the statistics)");
  }
  const bool training = a.mean_in == nullptr;
  ImageShape shape;
  const std::string why = ImagesOf(s, instance, &shape);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* x = ops.Matrix("x", a.x, shape);
    MPSMatrix* y = ops.Matrix("y", a.y, shape);
    MPSImage* xi = ops.Image("x", shape);
    MPSImage* yi = ops.Image("y", shape);
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
    if (!ops.status.ok()) return ops.status;
    BackendStatus st = WaitForStream(op);
    if (!st.ok()) return st;
    TFMPSBatchNormDataSource* source =
        [[TFMPSBatchNormDataSource alloc] initWithChannels:static_cast<NSUInteger>(s.channels)
                                                     gamma:a.gamma
                                                      beta:a.beta
                                                      mean:a.mean_in
                                                  variance:a.var_in
                                                   epsilon:a.epsilon];
    MPSCNNBatchNormalization* bn = [[MPSCNNBatchNormalization alloc] initWithDevice:metal::Device()
                                                                         dataSource:source];
    if (bn == nil) return BackendStatus::Internal(op + ": MPSCNNBatchNormalization initWithDevice:dataSource: returned nil");
    bn.epsilon = a.epsilon;
    if (!training) {
      // The statistics outputs, as the CPU backend writes them (the stream is idle here).
      for (int64_t c = 0; c < s.channels; ++c) {
        a.mean[c] = a.mean_in[c];
        a.variance[c] = a.var_in[c];
        a.inv_std[c] = InvStd(a.var_in[c], a.epsilon);
      }
      return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
        [to_image encodeToCommandBuffer:cb sourceMatrix:x destinationImage:xi];
        [bn encodeToCommandBuffer:cb sourceImage:xi destinationImage:yi];
        [to_matrix encodeToCommandBuffer:cb sourceImage:yi destinationMatrix:y];
      });
    }
    // Training: the batch statistics into a state, the normalization with them, the
    // state's (private) mean and variance blitted to a shared staging buffer the host
    // reads after the wait (inv_std is formed on the host, as the CPU backend does).
    MPSCNNBatchNormalizationStatistics* stats =
        [[MPSCNNBatchNormalizationStatistics alloc] initWithDevice:metal::Device()];
    if (stats == nil) {
      return BackendStatus::Internal(op + ": MPSCNNBatchNormalizationStatistics initWithDevice: returned nil");
    }
    MPSCNNBatchNormalizationState* state = [bn resultStateForSourceImage:xi sourceStates:nil destinationImage:yi];
    if (state == nil || state.mean == nil || state.variance == nil) {
      return BackendStatus::Internal(op + ": MPSCNNBatchNormalization resultStateForSourceImage: returned nil");
    }
    const size_t bytes = static_cast<size_t>(s.channels) * sizeof(float);
    id<MTLBuffer> staged = [metal::Device() newBufferWithLength:2 * bytes options:MTLResourceStorageModeShared];
    if (staged == nil) return BackendStatus::Internal(op + ": newBufferWithLength: returned nil");
    st = metal::SubmitAndWait(op, [&](id<MTLCommandBuffer> cb) {
      [to_image encodeToCommandBuffer:cb sourceMatrix:x destinationImage:xi];
      [stats encodeBatchToCommandBuffer:cb sourceImages:@[ xi ] batchNormalizationState:state];
      [bn encodeToCommandBuffer:cb sourceImage:xi batchNormalizationState:state destinationImage:yi];
      [to_matrix encodeToCommandBuffer:cb sourceImage:yi destinationMatrix:y];
      id<MTLBlitCommandEncoder> blit = [cb blitCommandEncoder];
      [blit copyFromBuffer:state.mean sourceOffset:0 toBuffer:staged destinationOffset:0 size:bytes];
      [blit copyFromBuffer:state.variance sourceOffset:0 toBuffer:staged destinationOffset:bytes size:bytes];
      [blit endEncoding];
    });
    if (!st.ok()) return st;
    const float* stat = static_cast<const float*>([staged contents]);
    for (int64_t c = 0; c < s.channels; ++c) {
      a.mean[c] = stat[c];
      a.variance[c] = stat[s.channels + c];
      a.inv_std[c] = InvStd(a.variance[c], a.epsilon);
    }
    return BackendStatus::Ok();
  }
}

BackendStatus NormBackwardMetal(const NormShape& s, const BackwardArgs& a, bool instance) {
  const std::string op = instance ? "InstanceNormBackwardMetal" : "BatchNormBackwardMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  if (a.dtype != DataType::kFloat32) return BackendStatus::Unsupported(op + ": float16 data (float32 only)");
  if (instance) return BackendStatus::Unsupported(op + ": instance norm is not on Metal yet");
  if (!a.training) {
    return BackendStatus::Unsupported(op + ": the inference gradient (MPS's gradient kernels are the training "
                                           "gradient of the batch statistics)");
  }
  if (s.rows == 0 || s.groups != 1 || s.channels == 0) {
    return BackendStatus::Unsupported(op + ": no rows (the CPU backend writes the zero sums)");
  }
  ImageShape shape;
  const std::string why = ImagesOf(s, instance, &shape);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  const size_t bytes = static_cast<size_t>(s.channels) * sizeof(float);
  const metal::BufferRef dgamma_ref = metal::FindBuffer(a.gamma_backprop, bytes);
  const metal::BufferRef dbeta_ref = metal::FindBuffer(a.beta_backprop, bytes);
  if (!dgamma_ref.found() || !dbeta_ref.found()) {
    return BackendStatus::Unsupported(op + ": gamma_backprop or beta_backprop is not in a registered Metal buffer");
  }
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* dy = ops.Matrix("dy", a.dy, shape);
    MPSMatrix* x = ops.Matrix("x", a.x, shape);
    MPSMatrix* dx = ops.Matrix("dx", a.dx, shape);
    MPSImage* dyi = ops.Image("dy", shape);
    MPSImage* xi = ops.Image("x", shape);
    MPSImage* dxi = ops.Image("dx", shape);
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
    if (!ops.status.ok()) return ops.status;
    BackendStatus st = WaitForStream(op);
    if (!st.ok()) return st;
    // MPS's gradient is the one of y's dependence on x through the batch statistics; the
    // extra terms of the statistics outputs' own gradients (norm.h: gm, gv) are not in it.
    for (int64_t c = 0; c < s.channels; ++c) {
      if ((a.mean_backprop != nullptr && a.mean_backprop[c] != 0.0f) ||
          (a.variance_backprop != nullptr && a.variance_backprop[c] != 0.0f)) {
        return BackendStatus::Unsupported(op + ": nonzero gradients of the batch mean or variance outputs");
      }
    }
    // The forward's statistics, given as mean and inv_std, initialize the state through
    // the data source (Apple: its mean and variance "initialize the state for a
    // subsequent batch normalization"); with epsilon 0 MPS's 1 / sqrt(variance + epsilon)
    // is inv_std up to float32 rounding when variance = 1 / inv_std^2.
    std::vector<float> variance(static_cast<size_t>(s.channels)), zeros(static_cast<size_t>(s.channels), 0.0f);
    for (int64_t c = 0; c < s.channels; ++c) {
      const double inv = a.inv_std[c];
      if (!(inv > 0.0) || !std::isfinite(inv) || !std::isfinite(a.mean[c])) {
        return BackendStatus::Unsupported(op + ": inv_std is not positive and finite, or mean is not finite");
      }
      variance[static_cast<size_t>(c)] = static_cast<float>(1.0 / (inv * inv));
      if (!std::isfinite(variance[static_cast<size_t>(c)]) || variance[static_cast<size_t>(c)] <= 0.0f) {
        return BackendStatus::Unsupported(op + ": 1 / inv_std^2 is not a positive float32");
      }
    }
    TFMPSBatchNormDataSource* source =
        [[TFMPSBatchNormDataSource alloc] initWithChannels:static_cast<NSUInteger>(s.channels)
                                                     gamma:a.gamma
                                                      beta:zeros.data()
                                                      mean:a.mean
                                                  variance:variance.data()
                                                   epsilon:0.0f];
    MPSCNNBatchNormalization* bn = [[MPSCNNBatchNormalization alloc] initWithDevice:metal::Device()
                                                                         dataSource:source];
    if (bn == nil) return BackendStatus::Internal(op + ": MPSCNNBatchNormalization initWithDevice:dataSource: returned nil");
    bn.epsilon = 0.0f;
    MPSCNNBatchNormalizationStatisticsGradient* stats_grad =
        [[MPSCNNBatchNormalizationStatisticsGradient alloc] initWithDevice:metal::Device() fusedNeuronDescriptor:nil];
    if (stats_grad == nil) {
      return BackendStatus::Internal(op + ": MPSCNNBatchNormalizationStatisticsGradient initWithDevice: returned nil");
    }
    MPSCNNBatchNormalizationGradient* grad =
        [[MPSCNNBatchNormalizationGradient alloc] initWithDevice:metal::Device() fusedNeuronDescriptor:nil];
    if (grad == nil) return BackendStatus::Internal(op + ": MPSCNNBatchNormalizationGradient initWithDevice: returned nil");
    MPSCNNBatchNormalizationState* state = [bn resultStateForSourceImage:xi sourceStates:nil destinationImage:dxi];
    if (state == nil) {
      return BackendStatus::Internal(op + ": MPSCNNBatchNormalization resultStateForSourceImage: returned nil");
    }
    bool no_gradients = false;
    st = metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      [to_image encodeToCommandBuffer:cb sourceMatrix:dy destinationImage:dyi];
      [to_image encodeToCommandBuffer:cb sourceMatrix:x destinationImage:xi];
      [stats_grad encodeBatchToCommandBuffer:cb
                             sourceGradients:@[ dyi ]
                                sourceImages:@[ xi ]
                     batchNormalizationState:state];
      [grad encodeToCommandBuffer:cb
                   sourceGradient:dyi
                      sourceImage:xi
          batchNormalizationState:state
              destinationGradient:dxi];
      [to_matrix encodeToCommandBuffer:cb sourceImage:dxi destinationMatrix:dx];
      // Apple: nil while no gradient kernel has generated them (then an Internal error).
      if (state.gradientForGamma == nil || state.gradientForBeta == nil) {
        no_gradients = true;
        return;
      }
      id<MTLBlitCommandEncoder> blit = [cb blitCommandEncoder];
      [blit copyFromBuffer:state.gradientForGamma
               sourceOffset:0
                   toBuffer:metal::BufferOf(dgamma_ref)
          destinationOffset:dgamma_ref.offset
                       size:bytes];
      [blit copyFromBuffer:state.gradientForBeta
               sourceOffset:0
                   toBuffer:metal::BufferOf(dbeta_ref)
          destinationOffset:dbeta_ref.offset
                       size:bytes];
      [blit endEncoding];
    });
    if (st.ok() && no_gradients) {
      return BackendStatus::Internal(op + ": the state's gradientForGamma or gradientForBeta is nil");
    }
    return st;
  }
}

}  // namespace norm
}  // namespace tfmps
