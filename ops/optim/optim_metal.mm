// Metal backend of the optim family, float32: MPSNNOptimizer{Adam,StochasticGradient
// Descent,RMSProp} on MPSVectors that alias the variables' unified-memory MTLBuffers
// where MPS's formula is the one asked for, and tf-mps's own kernels
// (optim_kernels.metal) for everything else. Built with ARC. Nothing here has run on a
// Mac yet: it is type-checked against the project's declarations of Apple's API and
// executed on Linux against the Metal emulation (emulation/, docs/metal-emulation.md),
// whose MPS fakes compute what Apple documents and which runs the kernels as C++.
//
// Which path runs what (formulas: optim.h, and Apple's MPSNNOptimizers.h):
//  * MPS (Semantics::kMps, MPS's own rule set): Adam and AMSGrad, SGD plain, momentum
//    and Nesterov, plain RMSProp; and plain SGD in Keras semantics (w - g*lr is the same
//    product and difference in both rule sets).
//  * tf-mps's kernels, because MPS's classes cannot reproduce them:
//    - Keras's Adam: algebraically MPS's formula, but not Keras's rounding: Keras raises
//      float32(beta) to the power t in float32, MPS takes beta as double; float32(0.999)
//      alone moves 1 - beta2^t by 1.3e-5 relative (t = 1..10), a hundred times float
//      rounding; the moments are also rounded in another order
//      (m + (g - m)*(1 - b1) against b1*m + (1 - b1)*g).
//    - Keras's SGD momentum/Nesterov: Keras keeps the momentum slot with the opposite
//      sign (m = mu*m - lr*g, w += m; MPS: m = mu*m + lr*g, w -= m).
//    - RMSProp in Keras semantics (Keras divides by sqrt(s + eps), MPS by sqrt(s) + eps),
//      and centered or momentum RMSProp in either (no MPS class has them).
//    - grad_sq (the sum of squares Keras uses for sparse gradients): MPS squares g itself.
//    The kernels repeat the CPU backend's operations in its order; compiled with
//    MTLMathModeSafe so that nothing is contracted into an fma or reordered.
//  * Gradient options map one to one onto MPSNNOptimizerDescriptor (clip, then rescale,
//    then regularize: the order Apple documents and optim.h follows), and into the
//    kernels' TfmpsGradientArgs.
//  * kUnsupported (the caller runs the CPU backend on the same memory): pointers outside
//    registered MTLBuffers or not 16-byte aligned inside them (Metal wants buffer offsets
//    aligned to the widest type a kernel reads, and MPS's kernels may read float4);
//    MPS-semantics Adam with grad_sq; variables over 2^32 - 1 elements on the kernels.
// Updates are in place (resultValuesVector is inputValuesVector). Apple calls these
// out-of-place updates, yet overwrites the momentum and velocity vectors in place, which
// an elementwise kernel can only do if each element is read and written by one thread.
// For a Mac run to settle: in-place values; whether MPS's own kernels contract a*b + c
// (then MPS-path results differ from the CPU backend in the last bit); that Apple's
// compiler accepts optim_kernels.metal and MTLMathModeSafe gives the CPU's rounding.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "ops/common/metal_context.h"
#include "ops/optim/optim.h"
#include "ops/optim/optim_kernels.h"

namespace tfmps {
namespace optim {
namespace {

// ------------------------------------------------------------------ argument mapping
MPSNNRegularizationType ToMps(Regularization r) {
  switch (r) {
    case Regularization::kL1: return MPSNNRegularizationTypeL1;
    case Regularization::kL2: return MPSNNRegularizationTypeL2;
    case Regularization::kNone: break;
  }
  return MPSNNRegularizationTypeNone;
}

MPSNNOptimizerDescriptor* MakeDescriptor(const GradientTransform& g, double lr) {
  return [MPSNNOptimizerDescriptor optimizerDescriptorWithLearningRate:static_cast<float>(lr)
                                                       gradientRescale:g.rescale
                                                 applyGradientClipping:g.clip
                                                       gradientClipMax:g.clip_max
                                                       gradientClipMin:g.clip_min
                                                    regularizationType:ToMps(g.regularization)
                                                   regularizationScale:g.regularization_scale];
}

// A float vector of n elements over the buffer that holds p, in place. Not found:
// p is not in a registered buffer or is misaligned there (the caller falls back to the
// CPU); *failed: MPS returned nil for a vector over a valid buffer (an error, never
// mistaken for success).
MPSVector* Wrap(const void* p, int64_t n, bool* failed) {
  const metal::BufferRef ref = metal::FindAlignedBuffer(p, static_cast<size_t>(n) * sizeof(float));
  if (!ref.found()) return nil;
  const NSUInteger length = static_cast<NSUInteger>(n);
  MPSVectorDescriptor* d = [MPSVectorDescriptor vectorDescriptorWithLength:length
                                                                  dataType:MPSDataTypeFloat32];
  MPSVector* v = d == nil ? nil
                          : [[MPSVector alloc] initWithBuffer:metal::BufferOf(ref)
                                                       offset:ref.offset
                                                   descriptor:d];
  if (v == nil) *failed = true;
  return v;
}

BackendStatus VectorFailed(const char* op, size_t index) {
  return BackendStatus::Internal(std::string(op) + ": MPSVector initWithBuffer: returned nil "
                                 "for variable " + std::to_string(index) + " or one of its slots");
}

BackendStatus NotInBuffer(const char* op, size_t index) {
  return BackendStatus::Unsupported(std::string(op) + ": variable " + std::to_string(index) +
                                    " or one of its slots is not in a 16-byte aligned, "
                                    "registered Metal buffer");
}

// --------------------------------------------------------------- optimizer cache
// MPS optimizer objects, keyed by everything fixed at creation. The learning rate and
// Adam's time step change every call and are set on the cached object instead, under
// the entry's lock, which is held until the last variable is encoded.
// The key holds bit patterns, not doubles: beta, epsilon, momentum and rho are op inputs
// that nothing forces to be finite, and a NaN compared with `<` would break std::map's
// ordering (undefined behaviour: a later call could be handed an optimizer with other
// parameters). With bits, equal inputs share an optimizer and any input, NaN included,
// gets one built from exactly its own values.
struct Key {
  int kind;
  uint64_t a, b, c;
  bool flag;
  uint32_t rescale, clip_min, clip_max, regularization_scale;
  bool clip;
  int regularization;

  bool operator<(const Key& o) const {
    return std::tie(kind, a, b, c, flag, rescale, clip_min, clip_max, regularization_scale,
                    clip, regularization) <
           std::tie(o.kind, o.a, o.b, o.c, o.flag, o.rescale, o.clip_min, o.clip_max,
                    o.regularization_scale, o.clip, o.regularization);
  }
};

uint64_t Bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
uint32_t Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

Key MakeKey(int kind, double a, double b, double c, bool flag, const GradientTransform& g) {
  // Unused options are zeroed so that they do not split the cache.
  const bool reg = g.regularization != Regularization::kNone;
  return Key{kind, Bits(a), Bits(b), Bits(c), flag, Bits(g.rescale),
             Bits(g.clip ? g.clip_min : 0.0f), Bits(g.clip ? g.clip_max : 0.0f),
             Bits(reg ? g.regularization_scale : 0.0f), g.clip,
             static_cast<int>(g.regularization)};
}

struct Cached {
  std::mutex mu;
  MPSNNOptimizer* optimizer = nil;
};

// beta1, beta2, epsilon, momentum and rho are op inputs, so a schedule may change them
// every step: the cache is bounded, and emptied when full. Callers hold a shared_ptr, so
// an entry in use outlives its eviction.
constexpr size_t kMaxCached = 64;

// nullptr when MPS returns nil for the optimizer (or its descriptor): nothing is cached
// then, so a later call tries again.
std::shared_ptr<Cached> GetCached(const Key& key, const std::function<MPSNNOptimizer*()>& make) {
  static std::mutex mu;
  static auto* cache = new std::map<Key, std::shared_ptr<Cached>>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  MPSNNOptimizer* optimizer = make();
  if (optimizer == nil) return nullptr;
  if (cache->size() >= kMaxCached) cache->clear();
  auto entry = std::make_shared<Cached>();
  entry->optimizer = optimizer;
  (*cache)[key] = entry;
  return entry;
}

BackendStatus NoOptimizer(const char* op) {
  return BackendStatus::Internal(std::string(op) + ": the MPS initializer returned nil "
                                 "(MPSNNOptimizerDescriptor or the optimizer itself)");
}

BackendStatus Precheck(const char* op, Semantics semantics, bool keras_ok, bool grad_sq) {
  if (semantics == Semantics::kKeras && !keras_ok) {
    return BackendStatus::Unsupported(std::string(op) +
                                      ": Keras semantics differ from MPS's formula");
  }
  if (grad_sq) {
    return BackendStatus::Unsupported(std::string(op) + ": grad_sq (MPS squares g itself)");
  }
  if (!metal::Available()) return BackendStatus::Unsupported(std::string(op) + ": no Metal device");
  return BackendStatus::Ok();
}

enum Kind { kAdam, kSgd, kRmsProp };

// ------------------------------------------------------------- tf-mps's own kernels
// optim_kernels.metal, compiled once with the metal context's safe-math options.
id<MTLComputePipelineState> KernelPipeline(const char* name, std::string* error) {
  return metal::KernelPipeline("optim_kernels.metal", kOptimKernelsSource, name, error);
}

TfmpsGradientArgs GradientArgs(const GradientTransform& g) {
  TfmpsGradientArgs a{};
  a.rescale = g.rescale;
  a.clip_lo = g.clip_min;
  a.clip_hi = g.clip_max;
  a.scale = g.regularization_scale;
  a.transform = g.is_identity() ? 0 : 1;
  a.clip = g.clip ? 1 : 0;
  a.regularization = g.regularization == Regularization::kL1 ? 1 : g.regularization == Regularization::kL2 ? 2 : 0;
  return a;
}

// The buffers of one variable's arrays, found before anything is encoded, so that an
// array outside the registered buffers makes the whole call unsupported (the caller
// then runs the CPU backend), never half encoded.
struct Bound {
  id<MTLBuffer> buffer;
  NSUInteger offset;
};

bool Find(const void* p, int64_t n, Bound* out) {
  const metal::BufferRef ref = metal::FindAlignedBuffer(p, static_cast<size_t>(n) * sizeof(float));
  if (!ref.found()) return false;
  *out = Bound{metal::BufferOf(ref), static_cast<NSUInteger>(ref.offset)};
  return true;
}

// One dispatch per variable, all in one command buffer: bufs in the kernel's parameter
// order, then the arguments struct by setBytes:.
template <typename Args>
void EncodeKernel(id<MTLComputeCommandEncoder> enc, id<MTLComputePipelineState> pipeline,
                  const std::vector<Bound>& bufs, const Args& args, int64_t n) {
  [enc setComputePipelineState:pipeline];
  for (size_t i = 0; i < bufs.size(); ++i) {
    [enc setBuffer:bufs[i].buffer offset:bufs[i].offset atIndex:i];
  }
  [enc setBytes:&args length:sizeof(Args) atIndex:bufs.size()];
  const NSUInteger group = std::min<NSUInteger>([pipeline maxTotalThreadsPerThreadgroup], 256);
  [enc dispatchThreads:MTLSizeMake(static_cast<NSUInteger>(n), 1, 1)
      threadsPerThreadgroup:MTLSizeMake(group, 1, 1)];
}

// Runs `kernel` over every variable: `bind(i, &bufs)` finds variable i's buffers
// (false: unsupported), `args(i)` gives its arguments struct.
template <typename Args, typename BindFn, typename ArgsFn>
BackendStatus RunKernel(const char* op, const char* kernel, size_t count, const std::vector<int64_t>& sizes,
                        const BindFn& bind, const ArgsFn& args) {
  if (!metal::Available()) return BackendStatus::Unsupported(std::string(op) + ": no Metal device");
  @autoreleasepool {
    std::vector<std::vector<Bound>> all(count);
    for (size_t i = 0; i < count; ++i) {
      if (sizes[i] == 0) continue;
      if (sizes[i] > static_cast<int64_t>(UINT32_MAX)) {
        return BackendStatus::Unsupported(std::string(op) + ": variable " + std::to_string(i) +
                                          " has more than 2^32 - 1 elements (one thread each)");
      }
      if (!bind(i, &all[i])) return NotInBuffer(op, i);
    }
    std::string error;
    id<MTLComputePipelineState> pipeline = KernelPipeline(kernel, &error);
    if (pipeline == nil) return BackendStatus::Internal(std::string(op) + ": " + error);
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
      for (size_t i = 0; i < count; ++i) {
        if (sizes[i] != 0) EncodeKernel(enc, pipeline, all[i], args(i), sizes[i]);
      }
      [enc endEncoding];
    });
  }
}

template <typename Slots>
std::vector<int64_t> Sizes(const std::vector<Slots>& vars) {
  std::vector<int64_t> sizes;
  for (const Slots& x : vars) sizes.push_back(x.size);
  return sizes;
}

// Keras's Adam: the constants in float exactly as optim_cpu.cc's AdamAll computes them.
BackendStatus AdamKernel(const AdamParams& p, const std::vector<AdamSlots<float>>& vars) {
  TfmpsAdamArgs base{};
  base.gradient = GradientArgs(p.gradient);
  const float t = static_cast<float>(static_cast<double>(p.step));
  const float b1p = std::pow(static_cast<float>(p.beta1), t);
  const float b2p = std::pow(static_cast<float>(p.beta2), t);
  base.alpha = static_cast<float>(p.lr) * std::sqrt(1.0f - b2p) / (1.0f - b1p);
  base.omb1 = static_cast<float>(1.0 - p.beta1);
  base.omb2 = static_cast<float>(1.0 - p.beta2);
  base.eps = static_cast<float>(p.epsilon);
  base.amsgrad = p.amsgrad ? 1 : 0;
  return RunKernel<TfmpsAdamArgs>(
      "tf-mps Adam kernel", "tfmps_adam_f32", vars.size(), Sizes(vars),
      [&](size_t i, std::vector<Bound>* b) {
        const AdamSlots<float>& x = vars[i];
        Bound w, m, v, vh, g, g2;
        if (!Find(x.var, x.size, &w) || !Find(x.m, x.size, &m) || !Find(x.v, x.size, &v) ||
            !Find(x.grad, x.size, &g)) {
          return false;
        }
        vh = w;  // bound to var when unused (never read)
        g2 = w;
        if (p.amsgrad && !Find(x.vhat, x.size, &vh)) return false;
        if (x.grad_sq != nullptr && !Find(x.grad_sq, x.size, &g2)) return false;
        *b = {w, m, v, vh, g, g2};
        return true;
      },
      [&](size_t i) {
        TfmpsAdamArgs a = base;
        a.n = static_cast<tfmps_u32>(vars[i].size);
        a.grad_sq = vars[i].grad_sq != nullptr ? 1 : 0;
        return a;
      });
}

// Keras's SGD with momentum or Nesterov.
BackendStatus SgdKernel(const SgdParams& p, const std::vector<SgdSlots<float>>& vars) {
  TfmpsSgdArgs base{};
  base.gradient = GradientArgs(p.gradient);
  base.lr = static_cast<float>(p.lr);
  base.mu = static_cast<float>(p.momentum);
  base.mode = p.nesterov ? 2 : 1;
  return RunKernel<TfmpsSgdArgs>(
      "tf-mps SGD kernel", "tfmps_sgd_f32", vars.size(), Sizes(vars),
      [&](size_t i, std::vector<Bound>* b) {
        const SgdSlots<float>& x = vars[i];
        Bound w, m, g;
        if (!Find(x.var, x.size, &w) || !Find(x.momentum, x.size, &m) || !Find(x.grad, x.size, &g)) return false;
        *b = {w, m, g};
        return true;
      },
      [&](size_t i) {
        TfmpsSgdArgs a = base;
        a.n = static_cast<tfmps_u32>(vars[i].size);
        return a;
      });
}

// RMSProp in either rule set, centered and momentum included.
BackendStatus RmsPropKernel(const RmsPropParams& p, const std::vector<RmsPropSlots<float>>& vars) {
  TfmpsRmsPropArgs base{};
  base.gradient = GradientArgs(p.gradient);
  base.lr = static_cast<float>(p.lr);
  base.rho = static_cast<float>(p.rho);
  base.omr = static_cast<float>(1.0 - p.rho);
  base.mu = static_cast<float>(p.momentum);
  base.eps = static_cast<float>(p.epsilon);
  base.keras = p.semantics == Semantics::kKeras ? 1 : 0;
  base.centered = p.centered ? 1 : 0;
  base.momentum = p.use_momentum ? 1 : 0;
  return RunKernel<TfmpsRmsPropArgs>(
      "tf-mps RMSProp kernel", "tfmps_rmsprop_f32", vars.size(), Sizes(vars),
      [&](size_t i, std::vector<Bound>* b) {
        const RmsPropSlots<float>& x = vars[i];
        Bound w, ms, mg, mom, g, g2;
        if (!Find(x.var, x.size, &w) || !Find(x.ms, x.size, &ms) || !Find(x.grad, x.size, &g)) return false;
        mg = mom = g2 = w;
        if (p.centered && !Find(x.mg, x.size, &mg)) return false;
        if (p.use_momentum && !Find(x.mom, x.size, &mom)) return false;
        if (x.grad_sq != nullptr && !Find(x.grad_sq, x.size, &g2)) return false;
        *b = {w, ms, mg, mom, g, g2};
        return true;
      },
      [&](size_t i) {
        TfmpsRmsPropArgs a = base;
        a.n = static_cast<tfmps_u32>(vars[i].size);
        a.grad_sq = vars[i].grad_sq != nullptr ? 1 : 0;
        return a;
      });
}

}  // namespace

// -------------------------------------------------------------------------- Adam
BackendStatus AdamMetal(const AdamParams& p, const std::vector<AdamSlots<float>>& vars) {
  const char* op = "MPSNNOptimizerAdam";
  if (p.semantics == Semantics::kKeras) return AdamKernel(p, vars);
  BackendStatus s = Precheck(op, p.semantics, /*keras_ok=*/false, p.grad_sq);
  if (!s.ok()) return s;
  @autoreleasepool {
    struct Vectors {
      MPSVector *var, *m, *v, *vhat, *grad;
    };
    std::vector<Vectors> vecs;
    for (size_t i = 0; i < vars.size(); ++i) {
      const AdamSlots<float>& x = vars[i];
      if (x.size == 0) continue;
      bool failed = false;
      Vectors w{Wrap(x.var, x.size, &failed), Wrap(x.m, x.size, &failed),
                Wrap(x.v, x.size, &failed), p.amsgrad ? Wrap(x.vhat, x.size, &failed) : nil,
                Wrap(x.grad, x.size, &failed)};
      if (failed) return VectorFailed(op, i);
      if (w.var == nil || w.m == nil || w.v == nil || w.grad == nil ||
          (p.amsgrad && w.vhat == nil)) {
        return NotInBuffer(op, i);
      }
      vecs.push_back(w);
    }
    if (vecs.empty()) return BackendStatus::Ok();
    const Key key = MakeKey(kAdam, p.beta1, p.beta2, p.epsilon, false, p.gradient);
    std::shared_ptr<Cached> cached = GetCached(key, [&]() -> MPSNNOptimizer* {
      MPSNNOptimizerDescriptor* d = MakeDescriptor(p.gradient, p.lr);
      if (d == nil) return nil;
      return [[MPSNNOptimizerAdam alloc] initWithDevice:metal::Device()
                                                  beta1:p.beta1
                                                  beta2:p.beta2
                                                epsilon:static_cast<float>(p.epsilon)
                                               timeStep:0
                                    optimizerDescriptor:d];
    });
    if (cached == nullptr) return NoOptimizer(op);
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      std::lock_guard<std::mutex> lock(cached->mu);
      MPSNNOptimizerAdam* adam = (MPSNNOptimizerAdam*)cached->optimizer;
      [adam setLearningRate:static_cast<float>(p.lr)];
      for (const Vectors& w : vecs) {
        // Every encode advances timeStep before using it, so each variable is set to
        // step - 1 to be updated with t = step.
        adam.timeStep = static_cast<NSUInteger>(p.step - 1);
        if (p.amsgrad) {
          [adam encodeToCommandBuffer:cb
                  inputGradientVector:w.grad
                    inputValuesVector:w.var
                  inputMomentumVector:w.m
                  inputVelocityVector:w.v
                maximumVelocityVector:w.vhat
                   resultValuesVector:w.var];
        } else {
          [adam encodeToCommandBuffer:cb
                  inputGradientVector:w.grad
                    inputValuesVector:w.var
                  inputMomentumVector:w.m
                  inputVelocityVector:w.v
                   resultValuesVector:w.var];
        }
      }
    });
  }
}

// --------------------------------------------------------------------------- SGD
BackendStatus SgdMetal(const SgdParams& p, const std::vector<SgdSlots<float>>& vars) {
  const char* op = "MPSNNOptimizerStochasticGradientDescent";
  if (p.semantics == Semantics::kKeras && p.use_momentum) return SgdKernel(p, vars);
  BackendStatus s = Precheck(op, p.semantics, /*keras_ok=*/!p.use_momentum, false);
  if (!s.ok()) return s;
  @autoreleasepool {
    struct Vectors {
      MPSVector *var, *momentum, *grad;
    };
    std::vector<Vectors> vecs;
    for (size_t i = 0; i < vars.size(); ++i) {
      const SgdSlots<float>& x = vars[i];
      if (x.size == 0) continue;
      // A nil momentum vector is MPS's plain rule, w -= lr*g.
      bool failed = false;
      Vectors w{Wrap(x.var, x.size, &failed),
                p.use_momentum ? Wrap(x.momentum, x.size, &failed) : nil,
                Wrap(x.grad, x.size, &failed)};
      if (failed) return VectorFailed(op, i);
      if (w.var == nil || w.grad == nil || (p.use_momentum && w.momentum == nil)) {
        return NotInBuffer(op, i);
      }
      vecs.push_back(w);
    }
    if (vecs.empty()) return BackendStatus::Ok();
    const double mu = p.use_momentum ? p.momentum : 0.0;
    const bool nesterov = p.use_momentum && p.nesterov;
    const Key key = MakeKey(kSgd, mu, 0.0, 0.0, nesterov, p.gradient);
    std::shared_ptr<Cached> cached = GetCached(key, [&]() -> MPSNNOptimizer* {
      MPSNNOptimizerDescriptor* d = MakeDescriptor(p.gradient, p.lr);
      if (d == nil) return nil;
      return [[MPSNNOptimizerStochasticGradientDescent alloc]
                initWithDevice:metal::Device()
                 momentumScale:static_cast<float>(mu)
           useNesterovMomentum:nesterov
           optimizerDescriptor:d];
    });
    if (cached == nullptr) return NoOptimizer(op);
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      std::lock_guard<std::mutex> lock(cached->mu);
      MPSNNOptimizerStochasticGradientDescent* sgd =
          (MPSNNOptimizerStochasticGradientDescent*)cached->optimizer;
      [sgd setLearningRate:static_cast<float>(p.lr)];
      for (const Vectors& w : vecs) {
        [sgd encodeToCommandBuffer:cb
               inputGradientVector:w.grad
                 inputValuesVector:w.var
               inputMomentumVector:w.momentum
                resultValuesVector:w.var];
      }
    });
  }
}

// ----------------------------------------------------------------------- RMSProp
BackendStatus RmsPropMetal(const RmsPropParams& p, const std::vector<RmsPropSlots<float>>& vars) {
  const char* op = "MPSNNOptimizerRMSProp";
  if (p.semantics == Semantics::kKeras || p.centered || p.use_momentum || p.grad_sq) {
    return RmsPropKernel(p, vars);
  }
  BackendStatus s = Precheck(op, p.semantics, /*keras_ok=*/false, p.grad_sq);
  if (!s.ok()) return s;
  @autoreleasepool {
    struct Vectors {
      MPSVector *var, *ms, *grad;
    };
    std::vector<Vectors> vecs;
    for (size_t i = 0; i < vars.size(); ++i) {
      const RmsPropSlots<float>& x = vars[i];
      if (x.size == 0) continue;
      bool failed = false;
      Vectors w{Wrap(x.var, x.size, &failed), Wrap(x.ms, x.size, &failed),
                Wrap(x.grad, x.size, &failed)};
      if (failed) return VectorFailed(op, i);
      if (w.var == nil || w.ms == nil || w.grad == nil) return NotInBuffer(op, i);
      vecs.push_back(w);
    }
    if (vecs.empty()) return BackendStatus::Ok();
    const Key key = MakeKey(kRmsProp, p.rho, p.epsilon, 0.0, false, p.gradient);
    std::shared_ptr<Cached> cached = GetCached(key, [&]() -> MPSNNOptimizer* {
      MPSNNOptimizerDescriptor* d = MakeDescriptor(p.gradient, p.lr);
      if (d == nil) return nil;
      return [[MPSNNOptimizerRMSProp alloc] initWithDevice:metal::Device()
                                                     decay:p.rho
                                                   epsilon:static_cast<float>(p.epsilon)
                                       optimizerDescriptor:d];
    });
    if (cached == nullptr) return NoOptimizer(op);
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      std::lock_guard<std::mutex> lock(cached->mu);
      MPSNNOptimizerRMSProp* rms = (MPSNNOptimizerRMSProp*)cached->optimizer;
      [rms setLearningRate:static_cast<float>(p.lr)];
      for (const Vectors& w : vecs) {
        [rms encodeToCommandBuffer:cb
               inputGradientVector:w.grad
                 inputValuesVector:w.var
           inputSumOfSquaresVector:w.ms
                resultValuesVector:w.var];
      }
    });
  }
}

}  // namespace optim
}  // namespace tfmps
