// CPU fakes of MPS's MPSCNNBatchNormalization.h, MPSCNNInstanceNormalization.h: the kernels, data sources, states and gradients.
// Linux emulation only; built with ARC. They compute with the CPU backend.
//
// What is emulated so far: MPSCNNBatchNormalization's initializer, its inherited
// -encodeToCommandBuffer:sourceImage:destinationImage: (inference, the data source's
// statistics), -resultStateForSourceImage:sourceStates:destinationImage: and
// -encodeToCommandBuffer:sourceImage:batchNormalizationState:destinationImage:
// (training, the state's statistics); MPSCNNBatchNormalizationStatistics' batch encode;
// MPSCNNBatchNormalizationStatisticsGradient's batch encode and
// MPSCNNBatchNormalizationGradient's single-image encode (no fused neuron);
// MPSCNNInstanceNormalization's initializer and inherited encode.
// What Apple documents, and what the fake does with it:
//  * MPSCNNBatchNormalization(3): per feature channel c,
//      out = (in - mean[c]) * gamma[c] / sqrt(variance[c] + epsilon) + beta[c].
//    The fake computes this with the CPU backend's inference forward (ops/norm/norm.h:
//    y = (x - mean) * (gamma * inv_std) + beta, inv_std = 1 / sqrt(variance + epsilon)),
//    the same formula up to float32 rounding, over every pixel of every image as one
//    [R, C] batch (batch normalization reduces nothing in inference).
//  * -initWithDevice:dataSource: reads the data source: -load (NO: nil), then
//    -numberOfFeatureChannels, -gamma, -beta, -mean, -variance, then -purge, so every
//    load is balanced; the kernel keeps copies (MPS copies the parameters into its own
//    buffers; -reloadDataSource: exists to pick up changes).
//  * MPSCNNBatchNormalizationStatistics (header): updates the state "with the batch
//    statistics necessary to perform a batch normalization ... as described in"
//    arXiv 1502.03167v3. The paper's training transform uses the biased batch variance
//    (1/m) sum (x - mean)^2, the op's (norm.h): the fake computes mean and variance with
//    the CPU backend's training forward over every pixel of every image of the batch.
//  * The state (header): no public initializer, "cannot initialize the size of its own
//    underlying resources"; -mean / -variance: "the most recently computed batch mean
//    / variance values"; -gamma / -beta: "the state's current" values.
//  * The data source's -epsilon: the header says "Default value if method unavailable:
//    FLT_MIN" (the kernel's epsilon property is separate and documented without a
//    default).
//  * MPSCNNInstanceNormalization (header): "normalizes each image, on a per-channel
//    basis, to have zero mean and unit variance: y = (x - mean) * gamma /
//    sqrt(variance + epsilon) + beta". -initWithDevice:dataSource: reads the data
//    source's numberOfFeatureChannels, gamma, beta and its optional -epsilon ("Default
//    value if method unavailable: FLT_MIN"; the fake takes FLT_MIN then).
// Where Apple is silent, what the fake chooses (flag for a Mac run):
//  * Instance norm's variance: biased, (1/(H*W)) sum (x - mean)^2 ("unit variance" of
//    the output holds exactly for that one). The fake runs the CPU backend's instance
//    norm forward (groups = the images of the MPSImage, rows = H*W). NULL gamma or beta
//    aborts (emulation limit).
//  * The variance is the biased one (the paper's, see above); Apple's pages never write
//    the formula. Mean and variance are accumulated "over multiple images": the fake
//    emulates one statistics encode per fresh (or -reset) state and aborts on a second.
//  * The state's buffers are private (the code must blit them to read them); -gamma and
//    -beta hold the kernel's; -gradientForGamma / -gradientForBeta are nil (no gradient
//    kernel ran). A state used by the normalization before any statistics encode aborts.
//  * With a state, the normalization uses the kernel's gamma, beta and epsilon property.
//  * The data source's mean and variance (when given) initialize the state (Apple's
//    protocol page says so) and count as its statistics: the gradient kernels accept
//    such a state although Apple's gradient pages speak of a state "previously updated
//    using" MPSCNNBatchNormalizationStatistics (flag for a Mac run).
//  * The gradients: Apple gives no formula. The fake computes the paper's training
//    gradient, the CPU backend's training backward with zero mean/variance gradients,
//    from the state's mean, variance and gamma and the kernel's epsilon at the
//    statistics-gradient encode (inv_std = 1 / sqrt(variance + epsilon) formed in double,
//    as the CPU backend does): dgamma = sum dy * xhat, dbeta = sum dy into the state's
//    gradientForGamma / gradientForBeta (private buffers, made by that encode; nil
//    before), dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)) by the
//    gradient kernel, which requires the statistics-gradient encode first. One gradient
//    encode per state (accumulating over several batches aborts).
//  * NULL gamma or beta: not emulated (abort). NULL mean or variance: allowed at init
//    (training gets them from a state), but then the stateless encode aborts.
//  * epsilon: the kernel's property is documented without a default; the header gives
//    the data source's optional -epsilon "Default value if method unavailable: FLT_MIN".
//    The fake takes -epsilon when the data source answers it, else FLT_MIN (as Apple's
//    header says). An epsilon set to NaN aborts the encodes (emulation check).
//  * Images: float32 feature channels only (the fake's limit, not Apple's); source and
//    destination of the same size and numberOfFeatureChannels channels; the whole
//    destination is written (no clipRect, offset 0, edgeMode irrelevant: 1 x 1).
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "emulation/metal/metal_emu.h"
#include "emulation/mps/mps_emu.h"
#include "emulation/runtime/objc_emu.h"
#include "ops/norm/norm.h"

// MPSCNNKernel's ivars, as mps_cnn.mm's @implementation declares them: a subclass in
// another file must see them to lay out its own after them (mps_emu.h says why). The
// runtime checks the layout when it loads the classes (objc_runtime.cc), so a change in
// mps_cnn.mm that is not mirrored here fails loudly, not silently.
@interface MPSCNNKernel () {
 @protected
  MPSOffset _offset;
  MPSImageEdgeMode _edgeMode;
}
@end

// MPSCNNGradientKernel's, likewise (mps_cnn.mm).
@interface MPSCNNGradientKernel () {
 @protected
  NSInteger _kernelOffsetX, _kernelOffsetY;
}
@end

namespace {

std::string S(int64_t v) { return std::to_string(v); }

void CheckFloatImage(const char* method, const char* name, MPSImage* image, id<MTLDevice> device) {
  EmuCheckFloatImage(method, name, image, device, "the fake normalizes float32 only");
}

const tfmps::ParallelFor kSerial = [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
  if (total > 0) fn(0, total);
};

bool SameSize(MPSImage* a, MPSImage* b) {
  return [a numberOfImages] == [b numberOfImages] && [a height] == [b height] && [a width] == [b width] &&
         [a featureChannels] == [b featureChannels];
}

}  // namespace

// ------------------------------------------------------------------ batch normalization
@implementation MPSCNNBatchNormalizationState {
 @public
  MPSCNNBatchNormalization* _batchNormalization;
  id<MTLBuffer> _gamma, _beta, _mean, _variance;
  id<MTLBuffer> _gradientForGamma, _gradientForBeta;  // nil until a statistics gradient encode
  int64_t _channels;
  float _epsilon;       // the batch normalization's at the statistics gradient encode
  bool _hasStatistics;  // statistics from the data source or a statistics encode
  bool _fromStatisticsKernel;  // a statistics encode was made on this state (since -reset)
}
- (MPSCNNBatchNormalization*)batchNormalization { return _batchNormalization; }
- (void)reset {
  _hasStatistics = _fromStatisticsKernel = false;
  _gradientForGamma = _gradientForBeta = nil;
}
- (id<MTLBuffer>)gamma { return _gamma; }
- (id<MTLBuffer>)beta { return _beta; }
- (id<MTLBuffer>)mean { return _mean; }
- (id<MTLBuffer>)variance { return _variance; }
- (id<MTLBuffer>)gradientForGamma { return _gradientForGamma; }
- (id<MTLBuffer>)gradientForBeta { return _gradientForBeta; }
@end

@implementation MPSCNNBatchNormalization {
  id<MPSCNNBatchNormalizationDataSource> _dataSource;
  int64_t _channels;
  std::vector<float> _gamma, _beta, _mean, _variance;  // _mean/_variance empty: none
  float _epsilon;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device
                    dataSource:(id<MPSCNNBatchNormalizationDataSource>)dataSource {
  const char* method = "-[MPSCNNBatchNormalization initWithDevice:dataSource:]";
  if (dataSource == nil) EmuValidationFailure(method, "dataSource is nil");
  self = [super initEmuWithDevice:device];
  if (self == nil) return nil;
  if (![dataSource load]) return nil;
  _channels = static_cast<int64_t>([dataSource numberOfFeatureChannels]);
  if (_channels < 1) EmuValidationFailure(method, "the data source has no feature channels");
  const float* gamma = [dataSource gamma];
  const float* beta = [dataSource beta];
  if (gamma == nullptr || beta == nullptr) {
    EmuValidationFailure(method, "emulation limit: the data source's gamma or beta is NULL (Apple does not say "
                                 "what MPS does then)");
  }
  _gamma.assign(gamma, gamma + _channels);
  _beta.assign(beta, beta + _channels);
  const float* mean = [dataSource mean];
  const float* variance = [dataSource variance];
  if ((mean == nullptr) != (variance == nullptr)) {
    EmuValidationFailure(method, "emulation limit: the data source has a mean but no variance, or the reverse");
  }
  if (mean != nullptr) {
    _mean.assign(mean, mean + _channels);
    _variance.assign(variance, variance + _channels);
  }
  _epsilon = [dataSource respondsToSelector:@selector(epsilon)] ? [dataSource epsilon]
                                                                 : std::numeric_limits<float>::min();
  [dataSource purge];
  _dataSource = dataSource;
  return self;
}

- (NSUInteger)numberOfFeatureChannels { return static_cast<NSUInteger>(_channels); }
- (float)epsilon { return _epsilon; }
- (void)setEpsilon:(float)v { _epsilon = v; }
- (id<MPSCNNBatchNormalizationDataSource>)dataSource { return _dataSource; }

- (MPSCNNBatchNormalizationState*)resultStateForSourceImage:(MPSImage*)sourceImage
                                               sourceStates:(NSArray<MPSState*>*)sourceStates
                                           destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSCNNBatchNormalization resultStateForSourceImage:sourceStates:destinationImage:]";
  CheckFloatImage(method, "sourceImage", sourceImage, [self device]);
  CheckFloatImage(method, "destinationImage", destinationImage, [self device]);
  if (static_cast<int64_t>([sourceImage featureChannels]) != _channels) {
    EmuValidationFailure(method, "sourceImage has " + S([sourceImage featureChannels]) +
                                     " feature channels; numberOfFeatureChannels is " + S(_channels));
  }
  if (EmuInitShouldFail("MPSCNNBatchNormalizationState")) return nil;
  MPSCNNBatchNormalizationState* state = [[MPSCNNBatchNormalizationState alloc] init];
  if (state == nil) return nil;
  const size_t bytes = static_cast<size_t>(_channels) * sizeof(float);
  id<MTLDevice> device = [self device];
  state->_batchNormalization = self;
  state->_channels = _channels;
  state->_gamma = [device newBufferWithLength:bytes options:MTLResourceStorageModePrivate];
  state->_beta = [device newBufferWithLength:bytes options:MTLResourceStorageModePrivate];
  state->_mean = [device newBufferWithLength:bytes options:MTLResourceStorageModePrivate];
  state->_variance = [device newBufferWithLength:bytes options:MTLResourceStorageModePrivate];
  if (state->_gamma == nil || state->_beta == nil || state->_mean == nil || state->_variance == nil) return nil;
  std::memcpy(EmuBufferBytes(state->_gamma), _gamma.data(), bytes);
  std::memcpy(EmuBufferBytes(state->_beta), _beta.data(), bytes);
  if (_mean.empty()) {
    EmuFillUndefined(EmuBufferBytes(state->_mean), bytes);
    EmuFillUndefined(EmuBufferBytes(state->_variance), bytes);
  } else {  // Apple: the data source's mean and variance initialize the state
    std::memcpy(EmuBufferBytes(state->_mean), _mean.data(), bytes);
    std::memcpy(EmuBufferBytes(state->_variance), _variance.data(), bytes);
    state->_hasStatistics = true;
  }
  return state;
}

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
      batchNormalizationState:(MPSCNNBatchNormalizationState*)batchNormalizationState
             destinationImage:(MPSImage*)destinationImage {
  const char* method =
      "-[MPSCNNBatchNormalization encodeToCommandBuffer:sourceImage:batchNormalizationState:destinationImage:]";
  if (batchNormalizationState == nil) EmuValidationFailure(method, "batchNormalizationState is nil");
  if (batchNormalizationState->_channels != _channels) {
    EmuValidationFailure(method, "the state is for " + S(batchNormalizationState->_channels) + " channels, not " +
                                     S(_channels));
  }
  if (!batchNormalizationState->_hasStatistics) {
    EmuValidationFailure(method, "emulation check: no MPSCNNBatchNormalizationStatistics was encoded on the state");
  }
  [self encodeEmu:commandBuffer source:sourceImage state:batchNormalizationState destination:destinationImage
           method:method];
}

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSCNNBatchNormalization encodeToCommandBuffer:sourceImage:destinationImage:]";
  if (_mean.empty()) {
    EmuValidationFailure(method, "emulation check: no batchNormalizationState and the data source gave no mean "
                                 "and variance");
  }
  [self encodeEmu:commandBuffer source:sourceImage state:nil destination:destinationImage method:method];
}

// The normalization with the data source's statistics (state nil) or the state's (read
// when the command buffer runs).
- (void)encodeEmu:(id<MTLCommandBuffer>)commandBuffer
           source:(MPSImage*)sourceImage
            state:(MPSCNNBatchNormalizationState*)state
      destination:(MPSImage*)destinationImage
           method:(const char*)method {
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  CheckFloatImage(method, "sourceImage", sourceImage, [self device]);
  CheckFloatImage(method, "destinationImage", destinationImage, [self device]);
  if (static_cast<int64_t>([sourceImage featureChannels]) != _channels) {
    EmuValidationFailure(method, "sourceImage has " + S([sourceImage featureChannels]) +
                                     " feature channels; numberOfFeatureChannels is " + S(_channels));
  }
  if (!SameSize(sourceImage, destinationImage)) {
    EmuValidationFailure(method, "emulation limit: destinationImage is not the size of sourceImage");
  }
  if (sourceImage == destinationImage) {
    EmuValidationFailure(method, "emulation check: the source and destination are one image");
  }
  if (std::isnan(_epsilon)) {
    EmuValidationFailure(method, "emulation check: epsilon is NaN");
  }
  const std::vector<float> gamma = _gamma, beta = _beta, fixed_mean = _mean, fixed_variance = _variance;
  const float epsilon = _epsilon;
  MPSImage* src = sourceImage;
  MPSImage* dst = destinationImage;
  id<MTLBuffer> state_mean = state == nil ? nil : state->_mean;
  id<MTLBuffer> state_variance = state == nil ? nil : state->_variance;
  [dst beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [gamma, beta, fixed_mean, fixed_variance, state_mean, state_variance, epsilon, src, dst] {
        std::vector<float> mean = fixed_mean, variance = fixed_variance;
        if (state_mean != nil) {
          const float* m = static_cast<const float*>(EmuBufferBytes(state_mean));
          const float* v = static_cast<const float*>(EmuBufferBytes(state_variance));
          mean.assign(m, m + gamma.size());
          variance.assign(v, v + gamma.size());
        }
        const std::vector<float> x = EmuReadNhwc(src);
        std::vector<float> y(x.size());
        tfmps::norm::NormShape s;
        s.groups = 1;
        s.channels = static_cast<int64_t>(gamma.size());
        s.rows = static_cast<int64_t>(x.size()) / s.channels;
        std::vector<float> mean_out(gamma.size()), var_out(gamma.size()), inv_std(gamma.size());
        tfmps::norm::ForwardArgs a;
        a.dtype = tfmps::norm::DataType::kFloat32;
        a.x = x.data();
        a.gamma = gamma.data();
        a.beta = beta.data();
        a.mean_in = mean.data();
        a.var_in = variance.data();
        a.epsilon = epsilon;
        a.y = y.data();
        a.mean = mean_out.data();
        a.variance = var_out.data();
        a.inv_std = inv_std.data();
        std::vector<double> workspace(
            static_cast<size_t>(std::max<int64_t>(1, tfmps::norm::ForwardCpuWorkspace(s, /*training=*/false))));
        tfmps::norm::ForwardCpu(s, a, workspace.data(), kSerial);
        EmuWriteNhwc(dst, y);
      },
      [dst] { [dst endGpuWrite]; });
}

@end

// ------------------------------------------------------------------ batch statistics
@implementation MPSCNNBatchNormalizationStatistics

- (instancetype)initWithDevice:(id<MTLDevice>)device {
  return [super initEmuWithDevice:device];
}

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage {
  EmuValidationFailure("-[MPSCNNBatchNormalizationStatistics encodeToCommandBuffer:sourceImage:destinationImage:]",
                       "unavailable (Apple: use the batch encode with a state)");
}

- (void)encodeBatchToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                      sourceImages:(MPSImageBatch*)sourceImages
           batchNormalizationState:(MPSCNNBatchNormalizationState*)batchNormalizationState {
  const char* method =
      "-[MPSCNNBatchNormalizationStatistics encodeBatchToCommandBuffer:sourceImages:batchNormalizationState:]";
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  if (batchNormalizationState == nil) EmuValidationFailure(method, "batchNormalizationState is nil");
  if (sourceImages == nil || [sourceImages count] == 0) EmuValidationFailure(method, "sourceImages is empty");
  MPSCNNBatchNormalizationState* state = batchNormalizationState;
  const int64_t channels = state->_channels;
  std::vector<MPSImage*> images;
  for (NSUInteger i = 0; i < [sourceImages count]; ++i) {
    MPSImage* image = [sourceImages objectAtIndex:i];
    CheckFloatImage(method, "a source image", image, [self device]);
    if (static_cast<int64_t>([image featureChannels]) != channels) {
      EmuValidationFailure(method, "a source image has " + S([image featureChannels]) + " feature channels; the "
                                       "state's batch normalization has " + S(channels));
    }
    images.push_back(image);
  }
  if (state->_fromStatisticsKernel) {
    EmuValidationFailure(method, "emulation limit: accumulating statistics over several encodes on one state (Apple "
                                 "allows it; the fake emulates one encode per fresh or -reset state)");
  }
  state->_hasStatistics = state->_fromStatisticsKernel = true;
  id<MTLBuffer> mean_buffer = state->_mean;
  id<MTLBuffer> variance_buffer = state->_variance;
  EmuEncode(commandBuffer, method, [images, channels, mean_buffer, variance_buffer] {
    std::vector<float> x;
    for (MPSImage* image : images) {
      const std::vector<float> part = EmuReadNhwc(image);
      x.insert(x.end(), part.begin(), part.end());
    }
    tfmps::norm::NormShape s;
    s.groups = 1;
    s.channels = channels;
    s.rows = static_cast<int64_t>(x.size()) / channels;
    std::vector<float> y(x.size()), inv_std(static_cast<size_t>(channels));
    std::vector<float> ones(static_cast<size_t>(channels), 1.0f), zeros(static_cast<size_t>(channels), 0.0f);
    tfmps::norm::ForwardArgs a;
    a.dtype = tfmps::norm::DataType::kFloat32;
    a.x = x.data();
    a.gamma = ones.data();
    a.beta = zeros.data();
    a.epsilon = 0.0f;
    a.y = y.data();
    a.mean = static_cast<float*>(EmuBufferBytes(mean_buffer));
    a.variance = static_cast<float*>(EmuBufferBytes(variance_buffer));
    a.inv_std = inv_std.data();
    std::vector<double> workspace(
        static_cast<size_t>(std::max<int64_t>(1, tfmps::norm::ForwardCpuWorkspace(s, /*training=*/true))));
    tfmps::norm::ForwardCpu(s, a, workspace.data(), kSerial);
  });
}

@end

// ------------------------------------------------------------------ batch norm gradients
namespace {

// The state's statistics and gamma as the CPU backend's training backward takes them
// (inv_std = 1 / sqrt(variance + epsilon) in double, rounded once, as it forms it), over
// dy and x read from the images; dx, dgamma, dbeta out.
void BatchNormBackwardEmu(MPSCNNBatchNormalizationState* state, const std::vector<float>& dy,
                          const std::vector<float>& x, std::vector<float>* dx, float* dgamma, float* dbeta);

void CheckGradientImages(const char* method, MPSImage* gradient, MPSImage* source, int64_t channels,
                         id<MTLDevice> device) {
  CheckFloatImage(method, "the source gradient", gradient, device);
  CheckFloatImage(method, "the source image", source, device);
  if (!SameSize(gradient, source)) EmuValidationFailure(method, "the source gradient is not the size of the source image");
  if (static_cast<int64_t>([source featureChannels]) != channels) {
    EmuValidationFailure(method, "the source image has " + S([source featureChannels]) + " feature channels; the "
                                     "state's batch normalization has " + S(channels));
  }
}

}  // namespace

@implementation MPSCNNBatchNormalizationStatisticsGradient

- (instancetype)initWithDevice:(id<MTLDevice>)device
         fusedNeuronDescriptor:(MPSNNNeuronDescriptor*)fusedNeuronDescriptor {
  if (fusedNeuronDescriptor != nil) {
    EmuValidationFailure("-[MPSCNNBatchNormalizationStatisticsGradient initWithDevice:fusedNeuronDescriptor:]",
                         "emulation limit: a fused neuron is not emulated");
  }
  return [super initEmuWithDevice:device];
}

- (void)encodeBatchToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                   sourceGradients:(MPSImageBatch*)sourceGradients
                      sourceImages:(MPSImageBatch*)sourceImages
           batchNormalizationState:(MPSCNNBatchNormalizationState*)batchNormalizationState {
  const char* method = "-[MPSCNNBatchNormalizationStatisticsGradient "
                       "encodeBatchToCommandBuffer:sourceGradients:sourceImages:batchNormalizationState:]";
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  MPSCNNBatchNormalizationState* state = batchNormalizationState;
  if (state == nil) EmuValidationFailure(method, "batchNormalizationState is nil");
  if (sourceGradients == nil || sourceImages == nil || [sourceGradients count] != [sourceImages count] ||
      [sourceImages count] == 0) {
    EmuValidationFailure(method, "sourceGradients and sourceImages are not two batches of one length");
  }
  if (!state->_hasStatistics) {
    EmuValidationFailure(method, "emulation check: the state has no statistics (no data source mean and variance, no "
                                 "MPSCNNBatchNormalizationStatistics encode)");
  }
  state->_epsilon = [state->_batchNormalization epsilon];
  if (std::isnan(state->_epsilon)) EmuValidationFailure(method, "emulation check: the batch normalization's epsilon is NaN");
  if (state->_gradientForGamma != nil) {
    EmuValidationFailure(method, "emulation limit: accumulating gradients over several encodes on one state");
  }
  std::vector<MPSImage*> grads, images;
  for (NSUInteger i = 0; i < [sourceImages count]; ++i) {
    CheckGradientImages(method, [sourceGradients objectAtIndex:i], [sourceImages objectAtIndex:i], state->_channels,
                        [self device]);
    grads.push_back([sourceGradients objectAtIndex:i]);
    images.push_back([sourceImages objectAtIndex:i]);
  }
  const size_t bytes = static_cast<size_t>(state->_channels) * sizeof(float);
  state->_gradientForGamma = [[self device] newBufferWithLength:bytes options:MTLResourceStorageModePrivate];
  state->_gradientForBeta = [[self device] newBufferWithLength:bytes options:MTLResourceStorageModePrivate];
  if (state->_gradientForGamma == nil || state->_gradientForBeta == nil) {
    EmuValidationFailure(method, "emulation: newBufferWithLength: failed");
  }
  id<MTLBuffer> dgamma = state->_gradientForGamma, dbeta = state->_gradientForBeta;
  EmuEncode(commandBuffer, method, [state, grads, images, dgamma, dbeta] {
    std::vector<float> dy, x, dx;
    for (size_t i = 0; i < images.size(); ++i) {
      const std::vector<float> g = EmuReadNhwc(grads[i]), v = EmuReadNhwc(images[i]);
      dy.insert(dy.end(), g.begin(), g.end());
      x.insert(x.end(), v.begin(), v.end());
    }
    BatchNormBackwardEmu(state, dy, x, &dx, static_cast<float*>(EmuBufferBytes(dgamma)),
                         static_cast<float*>(EmuBufferBytes(dbeta)));
  });
}

@end

@implementation MPSCNNBatchNormalizationGradient

- (instancetype)initWithDevice:(id<MTLDevice>)device
         fusedNeuronDescriptor:(MPSNNNeuronDescriptor*)fusedNeuronDescriptor {
  if (fusedNeuronDescriptor != nil) {
    EmuValidationFailure("-[MPSCNNBatchNormalizationGradient initWithDevice:fusedNeuronDescriptor:]",
                         "emulation limit: a fused neuron is not emulated");
  }
  return [super initEmuWithDevice:device];
}

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
               sourceGradient:(MPSImage*)sourceGradient
                  sourceImage:(MPSImage*)sourceImage
      batchNormalizationState:(MPSCNNBatchNormalizationState*)batchNormalizationState
          destinationGradient:(MPSImage*)destinationGradient {
  const char* method = "-[MPSCNNBatchNormalizationGradient "
                       "encodeToCommandBuffer:sourceGradient:sourceImage:batchNormalizationState:destinationGradient:]";
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  MPSCNNBatchNormalizationState* state = batchNormalizationState;
  if (state == nil) EmuValidationFailure(method, "batchNormalizationState is nil");
  CheckGradientImages(method, sourceGradient, sourceImage, state->_channels, [self device]);
  CheckFloatImage(method, "destinationGradient", destinationGradient, [self device]);
  if (!SameSize(sourceImage, destinationGradient)) {
    EmuValidationFailure(method, "emulation limit: destinationGradient is not the size of sourceImage");
  }
  if (destinationGradient == sourceGradient || destinationGradient == sourceImage) {
    EmuValidationFailure(method, "emulation check: the destination is a source");
  }
  if (state->_gradientForGamma == nil) {
    EmuValidationFailure(method, "the state was not updated by an MPSCNNBatchNormalizationStatisticsGradient encode");
  }
  MPSImage* dst = destinationGradient;
  MPSImage* g = sourceGradient;
  MPSImage* src = sourceImage;
  [dst beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [state, g, src, dst] {
        std::vector<float> dx, dgamma(static_cast<size_t>(state->_channels)), dbeta(dgamma.size());
        BatchNormBackwardEmu(state, EmuReadNhwc(g), EmuReadNhwc(src), &dx, dgamma.data(), dbeta.data());
        EmuWriteNhwc(dst, dx);
      },
      [dst] { [dst endGpuWrite]; });
}

@end

namespace {

void BatchNormBackwardEmu(MPSCNNBatchNormalizationState* state, const std::vector<float>& dy,
                          const std::vector<float>& x, std::vector<float>* dx, float* dgamma, float* dbeta) {
  const int64_t C = state->_channels;
  const float* mean = static_cast<const float*>(EmuBufferBytes(state->_mean));
  const float* variance = static_cast<const float*>(EmuBufferBytes(state->_variance));
  const float* gamma = static_cast<const float*>(EmuBufferBytes(state->_gamma));
  std::vector<float> inv_std(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    inv_std[static_cast<size_t>(c)] =
        static_cast<float>(1.0 / std::sqrt(static_cast<double>(variance[c]) + state->_epsilon));
  }
  tfmps::norm::NormShape s;
  s.groups = 1;
  s.channels = C;
  s.rows = static_cast<int64_t>(x.size()) / C;
  dx->assign(x.size(), 0.0f);
  tfmps::norm::BackwardArgs a;
  a.dtype = tfmps::norm::DataType::kFloat32;
  a.training = true;
  a.dy = dy.data();
  a.x = x.data();
  a.gamma = gamma;
  a.mean = mean;
  a.inv_std = inv_std.data();
  a.dx = dx->data();
  a.gamma_backprop = dgamma;
  a.beta_backprop = dbeta;
  std::vector<double> workspace(
      static_cast<size_t>(std::max<int64_t>(1, tfmps::norm::BackwardCpuWorkspace(s, /*training=*/true))));
  tfmps::norm::BackwardCpu(s, a, workspace.data(), kSerial);
}

}  // namespace

// ------------------------------------------------------------------ instance normalization
@implementation MPSCNNInstanceNormalization {
  id<MPSCNNInstanceNormalizationDataSource> _dataSource;
  int64_t _channels;
  std::vector<float> _gamma, _beta;
  float _epsilon;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device
                    dataSource:(id<MPSCNNInstanceNormalizationDataSource>)dataSource {
  const char* method = "-[MPSCNNInstanceNormalization initWithDevice:dataSource:]";
  if (dataSource == nil) EmuValidationFailure(method, "dataSource is nil");
  self = [super initEmuWithDevice:device];
  if (self == nil) return nil;
  _channels = static_cast<int64_t>([dataSource numberOfFeatureChannels]);
  if (_channels < 1) EmuValidationFailure(method, "the data source has no feature channels");
  const float* gamma = [dataSource gamma];
  const float* beta = [dataSource beta];
  if (gamma == nullptr || beta == nullptr) {
    EmuValidationFailure(method, "emulation limit: the data source's gamma or beta is NULL");
  }
  _gamma.assign(gamma, gamma + _channels);
  _beta.assign(beta, beta + _channels);
  _epsilon = [dataSource respondsToSelector:@selector(epsilon)] ? [dataSource epsilon]
                                                                 : std::numeric_limits<float>::min();
  _dataSource = dataSource;
  return self;
}

- (float)epsilon { return _epsilon; }
- (void)setEpsilon:(float)v { _epsilon = v; }
- (id<MPSCNNInstanceNormalizationDataSource>)dataSource { return _dataSource; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSCNNInstanceNormalization encodeToCommandBuffer:sourceImage:destinationImage:]";
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  CheckFloatImage(method, "sourceImage", sourceImage, [self device]);
  CheckFloatImage(method, "destinationImage", destinationImage, [self device]);
  if (static_cast<int64_t>([sourceImage featureChannels]) != _channels) {
    EmuValidationFailure(method, "sourceImage has " + S([sourceImage featureChannels]) +
                                     " feature channels; the data source has " + S(_channels));
  }
  if (!SameSize(sourceImage, destinationImage)) {
    EmuValidationFailure(method, "emulation limit: destinationImage is not the size of sourceImage");
  }
  if (sourceImage == destinationImage) {
    EmuValidationFailure(method, "emulation check: the source and destination are one image");
  }
  const std::vector<float> gamma = _gamma, beta = _beta;
  const float epsilon = _epsilon;
  MPSImage* src = sourceImage;
  MPSImage* dst = destinationImage;
  [dst beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [gamma, beta, epsilon, src, dst] {
        const std::vector<float> x = EmuReadNhwc(src);
        std::vector<float> y(x.size());
        tfmps::norm::NormShape s;
        s.groups = static_cast<int64_t>([src numberOfImages]);
        s.channels = static_cast<int64_t>(gamma.size());
        s.rows = static_cast<int64_t>([src height] * [src width]);
        const size_t stats = static_cast<size_t>(s.groups * s.channels);
        std::vector<float> mean(stats), variance(stats), inv_std(stats);
        tfmps::norm::ForwardArgs a;
        a.dtype = tfmps::norm::DataType::kFloat32;
        a.x = x.data();
        a.gamma = gamma.data();
        a.beta = beta.data();
        a.epsilon = epsilon;
        a.y = y.data();
        a.mean = mean.data();
        a.variance = variance.data();
        a.inv_std = inv_std.data();
        std::vector<double> workspace(
            static_cast<size_t>(std::max<int64_t>(1, tfmps::norm::ForwardCpuWorkspace(s, /*training=*/true))));
        tfmps::norm::ForwardCpu(s, a, workspace.data(), kSerial);
        EmuWriteNhwc(dst, y);
      },
      [dst] { [dst endGpuWrite]; });
}

@end
