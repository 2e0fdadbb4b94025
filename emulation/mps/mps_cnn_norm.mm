// CPU fakes of MPS's MPSCNNBatchNormalization.h, MPSCNNInstanceNormalization.h: the kernels, data sources, states and gradients.
// Linux emulation only; built with ARC. They compute with the CPU backend.
//
// What is emulated so far: MPSCNNBatchNormalization's initializer and its inherited
// -encodeToCommandBuffer:sourceImage:destinationImage: (inference, the data source's
// statistics). What Apple documents, and what the fake does with it:
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
// Where Apple is silent, what the fake chooses (flag for a Mac run):
//  * NULL gamma or beta: not emulated (abort). NULL mean or variance: allowed at init
//    (training gets them from a state), but then the stateless encode aborts.
//  * epsilon: Apple's pages do not state the default. The fake takes the data source's
//    optional -epsilon (macOS 10.14) when it answers it, else leaves epsilon NaN, and
//    the encode aborts while it is NaN: code must set it (or answer -epsilon).
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

namespace {

std::string S(int64_t v) { return std::to_string(v); }

void CheckFloatImage(const char* method, const char* name, MPSImage* image, id<MTLDevice> device) {
  if (image == nil) EmuValidationFailure(method, std::string(name) + " is nil");
  if ([image device] != device) EmuValidationFailure(method, std::string(name) + " is on another device");
  if ([image featureChannelFormat] != MPSImageFeatureChannelFormatFloat32) {
    EmuValidationFailure(method, std::string("emulation limit: ") + name +
                                     " is not a float32 image (the fake normalizes float32 only)");
  }
}

// Every image of `image` as dense NHWC floats.
std::vector<float> ReadNhwc(MPSImage* image) {
  const int64_t N = [image numberOfImages], H = [image height], W = [image width], C = [image featureChannels];
  std::vector<float> out(static_cast<size_t>(N * H * W * C));
  const uint8_t* src = [image gpuBytes];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c)
          std::memcpy(&out[((n * H + h) * W + w) * C + c],
                      src + [image indexOfImage:n channel:c row:h column:w] * sizeof(float), sizeof(float));
  return out;
}

// Writes every image from NHWC values, zeroing the padding channels of the last slice.
void WriteNhwc(MPSImage* image, const std::vector<float>& in) {
  const int64_t N = [image numberOfImages], H = [image height], W = [image width], C = [image featureChannels];
  uint8_t* dst = [image gpuBytes];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        for (int64_t c = 0; c < C; ++c)
          std::memcpy(dst + [image indexOfImage:n channel:c row:h column:w] * sizeof(float),
                      &in[((n * H + h) * W + w) * C + c], sizeof(float));
        for (int64_t c = C; c % 4 != 0; ++c)
          std::memset(dst + [image indexOfImage:n channel:c row:h column:w] * sizeof(float), 0, sizeof(float));
      }
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
                                                                 : std::numeric_limits<float>::quiet_NaN();
  [dataSource purge];
  _dataSource = dataSource;
  return self;
}

- (NSUInteger)numberOfFeatureChannels { return static_cast<NSUInteger>(_channels); }
- (float)epsilon { return _epsilon; }
- (void)setEpsilon:(float)v { _epsilon = v; }
- (id<MPSCNNBatchNormalizationDataSource>)dataSource { return _dataSource; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSCNNBatchNormalization encodeToCommandBuffer:sourceImage:destinationImage:]";
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
  if (_mean.empty()) {
    EmuValidationFailure(method, "emulation check: no batchNormalizationState and the data source gave no mean "
                                 "and variance");
  }
  if (std::isnan(_epsilon)) {
    EmuValidationFailure(method, "emulation check: epsilon was never set (Apple's pages do not state its "
                                 "default: set it, or answer -epsilon in the data source)");
  }
  const std::vector<float> gamma = _gamma, beta = _beta, mean = _mean, variance = _variance;
  const float epsilon = _epsilon;
  MPSImage* src = sourceImage;
  MPSImage* dst = destinationImage;
  [dst beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [gamma, beta, mean, variance, epsilon, src, dst] {
        const std::vector<float> x = ReadNhwc(src);
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
        WriteNhwc(dst, y);
      },
      [dst] { [dst endGpuWrite]; });
}

@end
