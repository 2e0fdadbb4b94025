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
// kernel's epsilon property is set to the op's epsilon explicitly and the data source
// answers -epsilon with it too (the header's default when it does not is FLT_MIN; the
// property's is not documented). The
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
// Instance norm forward: each image n of x's [N, R*C] view gets its own 1-image MPSImage
// (MPSMatrixCopyToImage's sourceMatrixOrigin row n, back with destinationMatrixOrigin).
// y: MPSCNNInstanceNormalization (Apple: per image and channel, "y = (x - mean) * gamma /
// sqrt(variance + epsilon) + beta", "to have zero mean and unit variance": the biased
// variance, though Apple never writes it; flag for a Mac run), epsilon set explicitly.
// MPS does not expose its statistics, so the mean and variance outputs come from
// MPSCNNBatchNormalizationStatistics over that one image (batch statistics of one image
// are its instance statistics), blitted, waited for, inv_std formed on the host.
// Instance norm gradient: per image, the batch norm gradient kernels above on a state
// initialized from row n of mean and 1 / inv_std^2 (epsilon 0); the per-image gradients
// for gamma and beta are blitted to a staging buffer and summed over the images on the
// host in double after the wait. Not MPSCNNInstanceNormalizationGradient: its state comes
// from the forward kernel (resultStateForSourceImage:...), which recomputes the
// statistics with the forward's epsilon; the gradient op has neither that epsilon nor a
// way to hand MPS the given mean and inv_std, so it could only give a near result.
//
// kUnsupported (the CPU backend runs): float16 data; the inference gradient (MPS's gradient kernels are the training one); nonzero
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
#include "ops/common/metal_images.h"
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

// The per-channel scale and bias of one instance normalization, over the op's arrays.
@interface TFMPSInstanceNormDataSource : NSObject <MPSCNNInstanceNormalizationDataSource>
- (instancetype)initWithChannels:(NSUInteger)channels
                           gamma:(const float*)gamma
                            beta:(const float*)beta
                         epsilon:(float)epsilon;
@end

@implementation TFMPSInstanceNormDataSource {
  NSUInteger _channels;
  const float* _gamma;
  const float* _beta;
  float _epsilon;
}

- (instancetype)initWithChannels:(NSUInteger)channels
                           gamma:(const float*)gamma
                            beta:(const float*)beta
                         epsilon:(float)epsilon {
  self = [super init];
  if (self == nil) return nil;
  _channels = channels;
  _gamma = gamma;
  _beta = beta;
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
- (float)epsilon {
  return _epsilon;
}
- (NSString*)label {
  return @"tf-mps instance norm parameters";
}
- (id)copyWithZone:(NSZone*)zone {
  return [[TFMPSInstanceNormDataSource alloc] initWithChannels:_channels gamma:_gamma beta:_beta epsilon:_epsilon];
}

@end

namespace tfmps {
namespace norm {
namespace {

using metal::ImageShape;
using metal::kMaxArraySlices;
using metal::kMaxTextureSide;
using metal::Operands;
using metal::ToImage;
using metal::ToMatrix;

std::string Str(int64_t v) { return std::to_string(v); }

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

namespace {

// Instance norm forward: per image n (one 1-image MPSImage each, copied from row n of x's
// [N, R*C] matrix), MPSCNNInstanceNormalization for y and MPSCNNBatchNormalizationStatistics
// (the batch statistics of that one image are its instance statistics) for the mean and
// variance outputs, blitted to a staging buffer the host reads after the wait.
BackendStatus InstanceForward(const std::string& op, const NormShape& s, const ForwardArgs& a) {
  if (s.rows == 0 || s.groups < 1 || s.channels == 0) {
    return BackendStatus::Unsupported(op + ": no rows (the CPU backend writes the statistics)");
  }
  // One image per group: Metal's limits apply to each 1-image MPSImage.
  NormShape one_group = s;
  one_group.groups = 1;
  ImageShape one;
  const std::string why = ImagesOf(one_group, /*instance=*/true, &one);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  ImageShape shape = one;  // the [N, R*C] matrices' rows
  shape.n = s.groups;
  const int64_t N = s.groups, C = s.channels;
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* x = ops.Matrix("x", a.x, shape);
    MPSMatrix* y = ops.Matrix("y", a.y, shape);
    std::vector<MPSImage*> xi, yi;
    for (int64_t n = 0; n < N && ops.status.ok(); ++n) {
      xi.push_back(ops.Image("x", one));
      yi.push_back(ops.Image("y", one));
    }
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
    if (!ops.status.ok()) return ops.status;
    BackendStatus st = WaitForStream(op);
    if (!st.ok()) return st;
    TFMPSInstanceNormDataSource* in_source =
        [[TFMPSInstanceNormDataSource alloc] initWithChannels:static_cast<NSUInteger>(C)
                                                        gamma:a.gamma
                                                         beta:a.beta
                                                      epsilon:a.epsilon];
    MPSCNNInstanceNormalization* inorm = [[MPSCNNInstanceNormalization alloc] initWithDevice:metal::Device()
                                                                                   dataSource:in_source];
    if (inorm == nil) {
      return BackendStatus::Internal(op + ": MPSCNNInstanceNormalization initWithDevice:dataSource: returned nil");
    }
    inorm.epsilon = a.epsilon;
    TFMPSBatchNormDataSource* bn_source =
        [[TFMPSBatchNormDataSource alloc] initWithChannels:static_cast<NSUInteger>(C)
                                                     gamma:a.gamma
                                                      beta:a.beta
                                                      mean:nullptr
                                                  variance:nullptr
                                                   epsilon:a.epsilon];
    MPSCNNBatchNormalization* bn = [[MPSCNNBatchNormalization alloc] initWithDevice:metal::Device()
                                                                         dataSource:bn_source];
    if (bn == nil) return BackendStatus::Internal(op + ": MPSCNNBatchNormalization initWithDevice:dataSource: returned nil");
    bn.epsilon = a.epsilon;
    MPSCNNBatchNormalizationStatistics* stats =
        [[MPSCNNBatchNormalizationStatistics alloc] initWithDevice:metal::Device()];
    if (stats == nil) {
      return BackendStatus::Internal(op + ": MPSCNNBatchNormalizationStatistics initWithDevice: returned nil");
    }
    std::vector<MPSCNNBatchNormalizationState*> states;
    for (int64_t n = 0; n < N; ++n) {
      MPSCNNBatchNormalizationState* state = [bn resultStateForSourceImage:xi[n] sourceStates:nil destinationImage:yi[n]];
      if (state == nil || state.mean == nil || state.variance == nil) {
        return BackendStatus::Internal(op + ": MPSCNNBatchNormalization resultStateForSourceImage: returned nil");
      }
      states.push_back(state);
    }
    const size_t bytes = static_cast<size_t>(C) * sizeof(float);
    id<MTLBuffer> staged = [metal::Device() newBufferWithLength:2 * static_cast<size_t>(N) * bytes
                                                        options:MTLResourceStorageModeShared];
    if (staged == nil) return BackendStatus::Internal(op + ": newBufferWithLength: returned nil");
    st = metal::SubmitAndWait(op, [&](id<MTLCommandBuffer> cb) {
      for (int64_t n = 0; n < N; ++n) {
        to_image.sourceMatrixOrigin = MTLOriginMake(0, static_cast<NSUInteger>(n), 0);
        [to_image encodeToCommandBuffer:cb sourceMatrix:x destinationImage:xi[n]];
        [stats encodeBatchToCommandBuffer:cb sourceImages:@[ xi[n] ] batchNormalizationState:states[n]];
        [inorm encodeToCommandBuffer:cb sourceImage:xi[n] destinationImage:yi[n]];
        to_matrix.destinationMatrixOrigin = MTLOriginMake(0, static_cast<NSUInteger>(n), 0);
        [to_matrix encodeToCommandBuffer:cb sourceImage:yi[n] destinationMatrix:y];
      }
      id<MTLBlitCommandEncoder> blit = [cb blitCommandEncoder];
      for (int64_t n = 0; n < N; ++n) {
        [blit copyFromBuffer:states[n].mean
                 sourceOffset:0
                     toBuffer:staged
            destinationOffset:static_cast<size_t>(n) * bytes
                         size:bytes];
        [blit copyFromBuffer:states[n].variance
                 sourceOffset:0
                     toBuffer:staged
            destinationOffset:static_cast<size_t>(N + n) * bytes
                         size:bytes];
      }
      [blit endEncoding];
    });
    if (!st.ok()) return st;
    const float* stat = static_cast<const float*>([staged contents]);
    for (int64_t i = 0; i < N * C; ++i) {
      a.mean[i] = stat[i];
      a.variance[i] = stat[N * C + i];
      a.inv_std[i] = InvStd(a.variance[i], a.epsilon);
    }
    return BackendStatus::Ok();
  }
}

}  // namespace

BackendStatus NormForwardMetal(const NormShape& s, const ForwardArgs& a, bool instance) {
  const std::string op = instance ? "InstanceNormForwardMetal" : "BatchNormForwardMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  if (a.dtype != DataType::kFloat32) return BackendStatus::Unsupported(op + ": float16 data (float32 only)");
  if (instance) return InstanceForward(op, s, a);
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

namespace {

// MPS's gradient is the one of y's dependence on x through the statistics; the extra
// terms of the statistics outputs' own gradients (norm.h: gm, gv) are not in it. Read on
// the host (after the stream's wait): "" or why not.
std::string StatisticsGradientsAreZero(const BackwardArgs& a, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if ((a.mean_backprop != nullptr && a.mean_backprop[i] != 0.0f) ||
        (a.variance_backprop != nullptr && a.variance_backprop[i] != 0.0f)) {
      return "nonzero gradients of the mean or variance outputs";
    }
  }
  return "";
}

// variance = 1 / inv_std^2 for a data source with epsilon 0 (see the file comment): ""
// or why not.
std::string VarianceOf(const float* mean, const float* inv_std, int64_t count, std::vector<float>* variance) {
  variance->resize(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const double inv = inv_std[i];
    if (!(inv > 0.0) || !std::isfinite(inv) || !std::isfinite(mean[i])) {
      return "inv_std is not positive and finite, or mean is not finite";
    }
    const float v = static_cast<float>(1.0 / (inv * inv));
    if (!std::isfinite(v) || v <= 0.0f) return "1 / inv_std^2 is not a positive float32";
    (*variance)[static_cast<size_t>(i)] = v;
  }
  return "";
}

// Instance norm gradient: per image n, the batch norm training gradient kernels on a
// state initialized from row n of mean and inv_std (the batch statistics of one image are
// its instance statistics); the per-image gradients for gamma and beta are blitted to a
// staging buffer and summed over the images on the host (in double) after the wait.
BackendStatus InstanceBackward(const std::string& op, const NormShape& s, const BackwardArgs& a) {
  if (s.rows == 0 || s.groups < 1 || s.channels == 0) {
    return BackendStatus::Unsupported(op + ": no rows (the CPU backend writes the zero sums)");
  }
  // One image per group: Metal's limits apply to each 1-image MPSImage.
  NormShape one_group = s;
  one_group.groups = 1;
  ImageShape one;
  const std::string why = ImagesOf(one_group, /*instance=*/true, &one);
  if (!why.empty()) return BackendStatus::Unsupported(op + ": " + why);
  ImageShape shape = one;  // the [N, R*C] matrices' rows
  shape.n = s.groups;
  const int64_t N = s.groups, C = s.channels;
  @autoreleasepool {
    Operands ops{op};
    MPSMatrix* dy = ops.Matrix("dy", a.dy, shape);
    MPSMatrix* x = ops.Matrix("x", a.x, shape);
    MPSMatrix* dx = ops.Matrix("dx", a.dx, shape);
    std::vector<MPSImage*> dyi, xi, dxi;
    for (int64_t n = 0; n < N && ops.status.ok(); ++n) {
      dyi.push_back(ops.Image("dy", one));
      xi.push_back(ops.Image("x", one));
      dxi.push_back(ops.Image("dx", one));
    }
    MPSMatrixCopyToImage* to_image = ToImage(&ops);
    MPSImageCopyToMatrix* to_matrix = ToMatrix(&ops);
    if (!ops.status.ok()) return ops.status;
    BackendStatus st = WaitForStream(op);
    if (!st.ok()) return st;
    std::string no = StatisticsGradientsAreZero(a, N * C);
    if (!no.empty()) return BackendStatus::Unsupported(op + ": " + no);
    std::vector<float> variance, zeros(static_cast<size_t>(C), 0.0f);
    no = VarianceOf(a.mean, a.inv_std, N * C, &variance);
    if (!no.empty()) return BackendStatus::Unsupported(op + ": " + no);
    MPSCNNBatchNormalizationStatisticsGradient* stats_grad =
        [[MPSCNNBatchNormalizationStatisticsGradient alloc] initWithDevice:metal::Device() fusedNeuronDescriptor:nil];
    if (stats_grad == nil) {
      return BackendStatus::Internal(op + ": MPSCNNBatchNormalizationStatisticsGradient initWithDevice: returned nil");
    }
    MPSCNNBatchNormalizationGradient* grad =
        [[MPSCNNBatchNormalizationGradient alloc] initWithDevice:metal::Device() fusedNeuronDescriptor:nil];
    if (grad == nil) return BackendStatus::Internal(op + ": MPSCNNBatchNormalizationGradient initWithDevice: returned nil");
    std::vector<MPSCNNBatchNormalizationState*> states;
    for (int64_t n = 0; n < N; ++n) {
      TFMPSBatchNormDataSource* source =
          [[TFMPSBatchNormDataSource alloc] initWithChannels:static_cast<NSUInteger>(C)
                                                       gamma:a.gamma
                                                        beta:zeros.data()
                                                        mean:a.mean + n * C
                                                    variance:variance.data() + n * C
                                                     epsilon:0.0f];
      MPSCNNBatchNormalization* bn = [[MPSCNNBatchNormalization alloc] initWithDevice:metal::Device()
                                                                           dataSource:source];
      if (bn == nil) {
        return BackendStatus::Internal(op + ": MPSCNNBatchNormalization initWithDevice:dataSource: returned nil");
      }
      bn.epsilon = 0.0f;
      MPSCNNBatchNormalizationState* state = [bn resultStateForSourceImage:xi[n] sourceStates:nil
                                                          destinationImage:dxi[n]];
      if (state == nil) {
        return BackendStatus::Internal(op + ": MPSCNNBatchNormalization resultStateForSourceImage: returned nil");
      }
      states.push_back(state);
    }
    const size_t bytes = static_cast<size_t>(C) * sizeof(float);
    id<MTLBuffer> staged = [metal::Device() newBufferWithLength:2 * static_cast<size_t>(N) * bytes
                                                        options:MTLResourceStorageModeShared];
    if (staged == nil) return BackendStatus::Internal(op + ": newBufferWithLength: returned nil");
    bool no_gradients = false;
    st = metal::SubmitAndWait(op, [&](id<MTLCommandBuffer> cb) {
      for (int64_t n = 0; n < N; ++n) {
        to_image.sourceMatrixOrigin = MTLOriginMake(0, static_cast<NSUInteger>(n), 0);
        [to_image encodeToCommandBuffer:cb sourceMatrix:dy destinationImage:dyi[n]];
        [to_image encodeToCommandBuffer:cb sourceMatrix:x destinationImage:xi[n]];
        [stats_grad encodeBatchToCommandBuffer:cb
                               sourceGradients:@[ dyi[n] ]
                                  sourceImages:@[ xi[n] ]
                       batchNormalizationState:states[n]];
        [grad encodeToCommandBuffer:cb
                     sourceGradient:dyi[n]
                        sourceImage:xi[n]
            batchNormalizationState:states[n]
                destinationGradient:dxi[n]];
        to_matrix.destinationMatrixOrigin = MTLOriginMake(0, static_cast<NSUInteger>(n), 0);
        [to_matrix encodeToCommandBuffer:cb sourceImage:dxi[n] destinationMatrix:dx];
      }
      for (int64_t n = 0; n < N; ++n) {
        if (states[n].gradientForGamma == nil || states[n].gradientForBeta == nil) no_gradients = true;
      }
      if (no_gradients) return;
      id<MTLBlitCommandEncoder> blit = [cb blitCommandEncoder];
      for (int64_t n = 0; n < N; ++n) {
        [blit copyFromBuffer:states[n].gradientForGamma
                 sourceOffset:0
                     toBuffer:staged
            destinationOffset:static_cast<size_t>(n) * bytes
                         size:bytes];
        [blit copyFromBuffer:states[n].gradientForBeta
                 sourceOffset:0
                     toBuffer:staged
            destinationOffset:static_cast<size_t>(N + n) * bytes
                         size:bytes];
      }
      [blit endEncoding];
    });
    if (!st.ok()) return st;
    if (no_gradients) return BackendStatus::Internal(op + ": a state's gradientForGamma or gradientForBeta is nil");
    const float* g = static_cast<const float*>([staged contents]);
    for (int64_t c = 0; c < C; ++c) {
      double dgamma = 0.0, dbeta = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        dgamma += g[n * C + c];
        dbeta += g[(N + n) * C + c];
      }
      a.gamma_backprop[c] = static_cast<float>(dgamma);
      a.beta_backprop[c] = static_cast<float>(dbeta);
    }
    return BackendStatus::Ok();
  }
}

}  // namespace

BackendStatus NormBackwardMetal(const NormShape& s, const BackwardArgs& a, bool instance) {
  const std::string op = instance ? "InstanceNormBackwardMetal" : "BatchNormBackwardMetal";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  if (a.dtype != DataType::kFloat32) return BackendStatus::Unsupported(op + ": float16 data (float32 only)");
  if (instance) return InstanceBackward(op, s, a);
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
    std::string no = StatisticsGradientsAreZero(a, s.channels);
    if (!no.empty()) return BackendStatus::Unsupported(op + ": " + no);
    // The forward's statistics, given as mean and inv_std, initialize the state through
    // the data source (see the file comment).
    std::vector<float> variance, zeros(static_cast<size_t>(s.channels), 0.0f);
    no = VarianceOf(a.mean, a.inv_std, s.channels, &variance);
    if (!no.empty()) return BackendStatus::Unsupported(op + ": " + no);
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
