// CPU fakes of MPS's optimizers (MPSNNOptimizers.h): MPSNNOptimizerDescriptor,
// MPSNNOptimizer, MPSNNOptimizerAdam (with AMSGrad), MPSNNOptimizerStochasticGradientDescent
// and MPSNNOptimizerRMSProp, on MPSVectors. Linux emulation only; built with ARC.
//
// The arithmetic is the CPU backend's Semantics::kMps (ops/optim/optim.h), which
// implements the update rules as MPSNNOptimizers.h writes them:
//   gradient: clip to [gradientClipMin, gradientClipMax] (if applyGradientClipping),
//             times gradientRescale, plus the L1/L2 regularization gradient
//   SGD:      no momentum vector: w -= lr*g; else m = mu*m + lr*g, w -= m;
//             Nesterov: m = mu*m + g, w -= lr*(g + m*mu)
//   RMSProp:  s = decay*s + (1-decay)*g^2; w -= lr*g/(sqrt(s) + epsilon)
//   Adam:     t = t + 1; lr_t = lr*sqrt(1-beta2^t)/(1-beta1^t); m = beta1*m + (1-beta1)*g;
//             v = beta2*v + (1-beta2)*g^2; [AMSGrad: maxVel = max(maxVel, v)];
//             w -= lr_t*m/(sqrt(v or maxVel) + epsilon)
// so the emulation checks the Metal code's argument mapping, not Apple's kernels'
// rounding (which nobody here can observe). The learning rate is MPS's: a float.
//
// Encoding captures the optimizer's parameters at that moment (the learning rate, and
// Adam's time step, which each encode first increments), as a GPU kernel's arguments are
// fixed when it is encoded; the update itself runs when the command buffer runs.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <cstring>
#include <string>
#include <vector>

#include "emulation/metal/metal_emu.h"
#include "emulation/mps/mps_emu.h"
#include "emulation/runtime/objc_emu.h"
#include "ops/optim/optim.h"

using tfmps::optim::GradientTransform;
using tfmps::optim::Regularization;

namespace {

// The update runs on the queue's worker; one thread is enough for the tests' sizes.
const tfmps::ParallelFor& Serial() {
  static const tfmps::ParallelFor* serial = new tfmps::ParallelFor(
      [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
        if (total > 0) fn(0, total);
      });
  return *serial;
}

struct Arg {
  const char* name;
  MPSVector* vector;
  bool written;  // the update overwrites it
};

// What Apple requires of the vectors ("A valid MPSVector object ..."), plus the
// emulation's own: one float32 vector each of one length, on the kernel's device, and
// no two arguments overlapping in memory (except resultValuesVector being exactly
// inputValuesVector: an in-place update), since overlapping operands of an elementwise
// GPU kernel give undefined results.
void CheckVectors(const char* method, MPSKernel* kernel, id<MTLCommandBuffer> cb, const std::vector<Arg>& args) {
  if (cb == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if ([cb device] != [kernel device]) EmuValidationFailure(method, "the command buffer is for another device");
  const NSUInteger length = [args[0].vector length];
  for (const Arg& a : args) {
    MPSVector* v = a.vector;
    if (v == nil) continue;  // optional arguments are checked by the caller
    if ([v dataType] != MPSDataTypeFloat32) {
      EmuValidationFailure(method, std::string(a.name) + " is " + EmuDataTypeName([v dataType]) +
                                       "; the emulation implements MPSDataTypeFloat32 vectors only");
    }
    if ([v vectors] != 1) EmuValidationFailure(method, std::string(a.name) + " holds more than one vector");
    if ([v length] != length) {
      EmuValidationFailure(method, std::string(a.name) + " has length " + std::to_string([v length]) + ", " +
                                       args[0].name + " " + std::to_string(length) + ": lengths must be equal");
    }
    if ([v device] != [kernel device]) {
      EmuValidationFailure(method, std::string(a.name) + " is in a buffer of another device");
    }
  }
  for (size_t i = 0; i < args.size(); ++i) {
    for (size_t j = i + 1; j < args.size(); ++j) {
      if (args[i].vector == nil || args[j].vector == nil) continue;
      if (!args[i].written && !args[j].written) continue;  // reading twice is fine
      const EmuByteRange a = EmuRangeOf(args[i].vector), b = EmuRangeOf(args[j].vector);
      if (a.buffer != b.buffer || a.end <= b.begin || b.end <= a.begin) continue;
      const bool in_place = std::strcmp(args[i].name, "inputValuesVector") == 0 &&
                            std::strcmp(args[j].name, "resultValuesVector") == 0 && a.begin == b.begin &&
                            a.end == b.end;
      if (!in_place) {
        EmuValidationFailure(method, std::string("emulation check: ") + args[i].name + " and " + args[j].name +
                                         " overlap in memory (undefined results)");
      }
    }
  }
}

float* F(MPSVector* v) {
  return v == nil ? nullptr
                  : reinterpret_cast<float*>(static_cast<char*>(EmuBufferBytes([v data])) + [v offset]);
}

// Out of place: the result starts as the input values, and the update runs on it.
void CopyValues(MPSVector* values, MPSVector* result) {
  if (F(values) != F(result)) std::memmove(F(result), F(values), [values length] * sizeof(float));
}

}  // namespace

// ----------------------------------------------------------------------- descriptor
@implementation MPSNNOptimizerDescriptor
@synthesize learningRate, gradientRescale, applyGradientClipping, gradientClipMax, gradientClipMin,
    regularizationScale, regularizationType;

// The header's defaults: learningRate 0.001, gradientRescale 1.0, no clipping, no
// regularization (scale 0).
- (instancetype)init {
  self = [super init];
  if (self == nil) return nil;
  learningRate = 0.001f;
  gradientRescale = 1.0f;
  return self;
}

+ (instancetype)optimizerDescriptorWithLearningRate:(float)learningRate
                                    gradientRescale:(float)gradientRescale
                              applyGradientClipping:(BOOL)applyGradientClipping
                                    gradientClipMax:(float)gradientClipMax
                                    gradientClipMin:(float)gradientClipMin
                                 regularizationType:(MPSNNRegularizationType)regularizationType
                                regularizationScale:(float)regularizationScale {
  // The header: "A valid MPSNNOptimizerDescriptor object or nil, if failure."
  if (EmuInitShouldFail("MPSNNOptimizerDescriptor")) return nil;
  MPSNNOptimizerDescriptor* d = [[self alloc] init];
  d.learningRate = learningRate;
  d.gradientRescale = gradientRescale;
  d.applyGradientClipping = applyGradientClipping;
  d.gradientClipMax = gradientClipMax;
  d.gradientClipMin = gradientClipMin;
  d.regularizationType = regularizationType;
  d.regularizationScale = regularizationScale;
  return d;
}

@end

// ------------------------------------------------------------------------ optimizer
@interface MPSNNOptimizer ()
- (instancetype)initWithDevice:(id<MTLDevice>)device descriptor:(MPSNNOptimizerDescriptor*)descriptor;
- (GradientTransform)transform;
@end

@implementation MPSNNOptimizer {
  float _learningRate, _gradientRescale, _gradientClipMax, _gradientClipMin, _regularizationScale;
  MPSNNRegularizationType _regularizationType;
}
@synthesize applyGradientClipping;

- (instancetype)initWithDevice:(id<MTLDevice>)device descriptor:(MPSNNOptimizerDescriptor*)descriptor {
  if (descriptor == nil) {
    EmuValidationFailure((std::string("-[") + object_getClassName(self) + " initWithDevice:...]").c_str(),
                         "optimizerDescriptor is nil");
  }
  if ([descriptor regularizationType] > MPSNNRegularizationTypeL2) {
    EmuValidationFailure("-[MPSNNOptimizer initWithDevice:...]", "invalid regularizationType");
  }
  self = [super initEmuWithDevice:device];
  if (self == nil) return nil;
  _learningRate = [descriptor learningRate];
  _gradientRescale = [descriptor gradientRescale];
  self.applyGradientClipping = [descriptor applyGradientClipping];
  _gradientClipMax = [descriptor gradientClipMax];
  _gradientClipMin = [descriptor gradientClipMin];
  _regularizationScale = [descriptor regularizationScale];
  _regularizationType = [descriptor regularizationType];
  return self;
}

- (float)learningRate { return _learningRate; }
- (void)setLearningRate:(float)newLearningRate { _learningRate = newLearningRate; }
- (float)gradientRescale { return _gradientRescale; }
- (float)gradientClipMax { return _gradientClipMax; }
- (float)gradientClipMin { return _gradientClipMin; }
- (float)regularizationScale { return _regularizationScale; }
- (MPSNNRegularizationType)regularizationType { return _regularizationType; }

- (GradientTransform)transform {
  GradientTransform g;
  g.rescale = _gradientRescale;
  g.clip = self.applyGradientClipping;
  g.clip_min = _gradientClipMin;
  g.clip_max = _gradientClipMax;
  g.regularization = _regularizationType == MPSNNRegularizationTypeL1   ? Regularization::kL1
                     : _regularizationType == MPSNNRegularizationTypeL2 ? Regularization::kL2
                                                                        : Regularization::kNone;
  g.regularization_scale = _regularizationScale;
  return g;
}

@end

// ----------------------------------------------------------------------------- Adam
@implementation MPSNNOptimizerAdam {
  double _beta1, _beta2;
  float _epsilon;
}
@synthesize timeStep;

- (instancetype)initWithDevice:(id<MTLDevice>)device
                         beta1:(double)beta1
                         beta2:(double)beta2
                       epsilon:(float)epsilon
                      timeStep:(NSUInteger)timeStep_
           optimizerDescriptor:(MPSNNOptimizerDescriptor*)optimizerDescriptor {
  self = [super initWithDevice:device descriptor:optimizerDescriptor];
  if (self == nil) return nil;
  _beta1 = beta1;
  _beta2 = beta2;
  _epsilon = epsilon;
  self.timeStep = timeStep_;
  return self;
}

- (double)beta1 { return _beta1; }
- (double)beta2 { return _beta2; }
- (float)epsilon { return _epsilon; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
          inputGradientVector:(MPSVector*)inputGradientVector
            inputValuesVector:(MPSVector*)inputValuesVector
          inputMomentumVector:(MPSVector*)inputMomentumVector
          inputVelocityVector:(MPSVector*)inputVelocityVector
           resultValuesVector:(MPSVector*)resultValuesVector {
  [self encode:"-[MPSNNOptimizerAdam encodeToCommandBuffer:inputGradientVector:inputValuesVector:"
               "inputMomentumVector:inputVelocityVector:resultValuesVector:]"
                     cb:commandBuffer
                   grad:inputGradientVector
                 values:inputValuesVector
               momentum:inputMomentumVector
               velocity:inputVelocityVector
        maximumVelocity:nil
                 result:resultValuesVector];
}

// Apple: "maximumVelocityVector ... May be nil, if nil then normal Adam optimizer
// behaviour is followed."
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
          inputGradientVector:(MPSVector*)inputGradientVector
            inputValuesVector:(MPSVector*)inputValuesVector
          inputMomentumVector:(MPSVector*)inputMomentumVector
          inputVelocityVector:(MPSVector*)inputVelocityVector
        maximumVelocityVector:(MPSVector*)maximumVelocityVector
           resultValuesVector:(MPSVector*)resultValuesVector {
  [self encode:"-[MPSNNOptimizerAdam encodeToCommandBuffer:inputGradientVector:inputValuesVector:"
               "inputMomentumVector:inputVelocityVector:maximumVelocityVector:resultValuesVector:]"
                     cb:commandBuffer
                   grad:inputGradientVector
                 values:inputValuesVector
               momentum:inputMomentumVector
               velocity:inputVelocityVector
        maximumVelocity:maximumVelocityVector
                 result:resultValuesVector];
}

- (void)encode:(const char*)method
                 cb:(id<MTLCommandBuffer>)cb
               grad:(MPSVector*)grad
             values:(MPSVector*)values
           momentum:(MPSVector*)momentum
           velocity:(MPSVector*)velocity
    maximumVelocity:(MPSVector*)vmax
             result:(MPSVector*)result {
  if (grad == nil || values == nil || momentum == nil || velocity == nil || result == nil) {
    EmuValidationFailure(method, "the gradient, values, momentum, velocity and result vectors must not be nil");
  }
  CheckVectors(method, self, cb,
               {{"inputGradientVector", grad, false},
                {"inputValuesVector", values, false},
                {"inputMomentumVector", momentum, true},
                {"inputVelocityVector", velocity, true},
                {"maximumVelocityVector", vmax, true},
                {"resultValuesVector", result, true}});
  // "t = t + 1" happens in the encode, before t is used.
  self.timeStep = self.timeStep + 1;
  tfmps::optim::AdamParams p{};
  p.lr = self.learningRate;
  p.beta1 = _beta1;
  p.beta2 = _beta2;
  p.epsilon = _epsilon;
  p.step = static_cast<int64_t>(self.timeStep);
  p.amsgrad = vmax != nil;
  p.grad_sq = false;
  p.semantics = tfmps::optim::Semantics::kMps;
  p.gradient = [self transform];
  EmuEncode(cb, method, [p, grad, values, momentum, velocity, vmax, result] {
    CopyValues(values, result);
    const std::vector<tfmps::optim::AdamSlots<float>> slots{
        {F(result), F(momentum), F(velocity), F(vmax), F(grad), nullptr, static_cast<int64_t>([values length])}};
    tfmps::optim::AdamCpu<float>(p, slots, Serial());
  });
}

@end

// ----------------------------------------------------------------------------- SGD
@implementation MPSNNOptimizerStochasticGradientDescent {
  float _momentumScale;
  BOOL _nesterov;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device
                 momentumScale:(float)momentumScale
           useNesterovMomentum:(BOOL)useNesterovMomentum
           optimizerDescriptor:(MPSNNOptimizerDescriptor*)optimizerDescriptor {
  self = [super initWithDevice:device descriptor:optimizerDescriptor];
  if (self == nil) return nil;
  _momentumScale = momentumScale;
  _nesterov = useNesterovMomentum;
  return self;
}

- (float)momentumScale { return _momentumScale; }
- (BOOL)useNesterovMomentum { return _nesterov; }

// Apple: "inputMomentumVector == nil: variable = variable - (learningRate * g)".
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
          inputGradientVector:(MPSVector*)inputGradientVector
            inputValuesVector:(MPSVector*)inputValuesVector
          inputMomentumVector:(MPSVector*)inputMomentumVector
           resultValuesVector:(MPSVector*)resultValuesVector {
  const char* method =
      "-[MPSNNOptimizerStochasticGradientDescent encodeToCommandBuffer:inputGradientVector:inputValuesVector:"
      "inputMomentumVector:resultValuesVector:]";
  if (inputGradientVector == nil || inputValuesVector == nil || resultValuesVector == nil) {
    EmuValidationFailure(method, "the gradient, values and result vectors must not be nil");
  }
  CheckVectors(method, self, commandBuffer,
               {{"inputGradientVector", inputGradientVector, false},
                {"inputValuesVector", inputValuesVector, false},
                {"inputMomentumVector", inputMomentumVector, true},
                {"resultValuesVector", resultValuesVector, true}});
  tfmps::optim::SgdParams p{};
  p.lr = self.learningRate;
  p.momentum = _momentumScale;
  p.use_momentum = inputMomentumVector != nil;
  p.nesterov = p.use_momentum && _nesterov;
  p.semantics = tfmps::optim::Semantics::kMps;
  p.gradient = [self transform];
  MPSVector *grad = inputGradientVector, *values = inputValuesVector, *momentum = inputMomentumVector,
            *result = resultValuesVector;
  EmuEncode(commandBuffer, method, [p, grad, values, momentum, result] {
    CopyValues(values, result);
    const std::vector<tfmps::optim::SgdSlots<float>> slots{
        {F(result), F(momentum), F(grad), static_cast<int64_t>([values length])}};
    tfmps::optim::SgdCpu<float>(p, slots, Serial());
  });
}

@end

// ------------------------------------------------------------------------- RMSProp
@implementation MPSNNOptimizerRMSProp {
  double _decay;
  float _epsilon;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device
                         decay:(double)decay
                       epsilon:(float)epsilon
           optimizerDescriptor:(MPSNNOptimizerDescriptor*)optimizerDescriptor {
  self = [super initWithDevice:device descriptor:optimizerDescriptor];
  if (self == nil) return nil;
  _decay = decay;
  _epsilon = epsilon;
  return self;
}

- (double)decay { return _decay; }
- (float)epsilon { return _epsilon; }

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
          inputGradientVector:(MPSVector*)inputGradientVector
            inputValuesVector:(MPSVector*)inputValuesVector
      inputSumOfSquaresVector:(MPSVector*)inputSumOfSquaresVector
           resultValuesVector:(MPSVector*)resultValuesVector {
  const char* method =
      "-[MPSNNOptimizerRMSProp encodeToCommandBuffer:inputGradientVector:inputValuesVector:"
      "inputSumOfSquaresVector:resultValuesVector:]";
  if (inputGradientVector == nil || inputValuesVector == nil || inputSumOfSquaresVector == nil ||
      resultValuesVector == nil) {
    EmuValidationFailure(method, "the gradient, values, sum-of-squares and result vectors must not be nil");
  }
  CheckVectors(method, self, commandBuffer,
               {{"inputGradientVector", inputGradientVector, false},
                {"inputValuesVector", inputValuesVector, false},
                {"inputSumOfSquaresVector", inputSumOfSquaresVector, true},
                {"resultValuesVector", resultValuesVector, true}});
  tfmps::optim::RmsPropParams p{};
  p.lr = self.learningRate;
  p.rho = _decay;
  p.momentum = 0.0;
  p.epsilon = _epsilon;
  p.centered = false;
  p.use_momentum = false;
  p.grad_sq = false;
  p.semantics = tfmps::optim::Semantics::kMps;
  p.gradient = [self transform];
  MPSVector *grad = inputGradientVector, *values = inputValuesVector, *ms = inputSumOfSquaresVector,
            *result = resultValuesVector;
  EmuEncode(commandBuffer, method, [p, grad, values, ms, result] {
    CopyValues(values, result);
    const std::vector<tfmps::optim::RmsPropSlots<float>> slots{
        {F(result), F(ms), nullptr, nullptr, F(grad), nullptr, static_cast<int64_t>([values length])}};
    tfmps::optim::RmsPropCpu<float>(p, slots, Serial());
  });
}

@end
