// Fused optimizer updates: the backend interface of the optim family.
//
// Every update first transforms the gradient as MPSNNOptimizerDescriptor does
// (clip, then rescale, then regularize; see GradientTransform), then applies one of
// two documented rule sets:
//
//  * Semantics::kKeras -- Keras 3's update_step, operation for operation (same
//    rounding), so a tf_mps Keras optimizer matches keras.optimizers.* to float
//    rounding. Default for the Keras classes.
//  * Semantics::kMps -- the formulas of MPSNNOptimizer{Adam,StochasticGradientDescent,
//    RMSProp} (../shared/MPS_REFERENCE.md), extended where MPS has no such option
//    (RMSProp centered/momentum) in the same style. Documented in docs/optimizers.md.
//
// Adam (t = step, 1-based):
//   keras: b1p = b1^t, b2p = b2^t (in T); alpha = lr*sqrt(1-b2p)/(1-b1p) (in T)
//          m += (g-m)*(1-b1); v += (g^2-v)*(1-b2); [amsgrad: vhat = max(vhat,v); v := vhat]
//          w -= (m*alpha)/(sqrt(v)+eps)
//   mps:   lr_t = lr*sqrt(1-b2^t)/(1-b1^t) (in double, as MPS takes double betas);
//          m = b1*m+(1-b1)*g; v = b2*v+(1-b2)*g^2;
//          [amsgrad: vhat = max(vhat,v); v := vhat]  w -= lr_t*m/(sqrt(v)+eps)
// SGD (mu = momentum):
//   keras: plain w -= g*lr; momentum m = mu*m - g*lr, w += m;
//          nesterov m = mu*m - g*lr, w += mu*m - g*lr
//   mps:   plain w -= lr*g; momentum m = mu*m + lr*g, w -= m;
//          nesterov m = mu*m + g, w -= lr*(g + mu*m)
// RMSProp (rho, eps, mu; s = velocity, a = average gradient):
//   keras: s = rho*s + (1-rho)*g^2; [centered: a = rho*a + (1-rho)*g; d = s - a^2 + eps]
//          [else d = s + eps]; inc = lr*g/sqrt(d); [momentum: mom = mu*mom + inc; w -= mom]
//          [else w -= inc]
//   mps:   s = rho*s + (1-rho)*g^2; d = sqrt(s) + eps  [centered: d = sqrt(s - a^2) + eps];
//          inc = lr*g/d; [momentum: mom = mu*mom + inc; w -= mom] [else w -= inc]
#ifndef TFMPS_OPTIM_OPTIM_H_
#define TFMPS_OPTIM_OPTIM_H_

#include <cstdint>
#include <vector>

#include "ops/common/backend.h"

namespace tfmps {
namespace optim {

// 16-bit floating-point storage: IEEE binary16 ("half") and bfloat16, bit-compatible
// with TensorFlow's DT_HALF / DT_BFLOAT16 tensors (Eigen::half / Eigen::bfloat16), so
// the glue hands their data over without the backends seeing TensorFlow's types. The
// CPU backend computes on them as TensorFlow's own kernels do (and so Keras does on a
// float16 or bfloat16 variable): every operation in float, rounded back to 16 bits
// (round to nearest even) before the next one.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2, "16-bit storage types");

enum class Semantics { kKeras, kMps };
enum class Regularization { kNone, kL1, kL2 };

// MPSNNOptimizerDescriptor's gradient options, applied in this order before the rule:
//   if clip: g = min(max(g, clip_min), clip_max);  g = g * rescale;
//   L1: g += scale * sign(w);  L2: g += scale * w
// Apple documents gradientClipMax/Min as the bounds "before gradient is rescaled"
// (../shared/MPS_REFERENCE.md says rescale first; Apple's documentation wins).
struct GradientTransform {
  float rescale = 1.0f;
  bool clip = false;
  float clip_min = 0.0f;
  float clip_max = 0.0f;
  Regularization regularization = Regularization::kNone;
  float regularization_scale = 0.0f;

  bool is_identity() const {
    return rescale == 1.0f && !clip && regularization == Regularization::kNone;
  }
};

// Hyper-parameters arrive in double so that constants Keras computes in Python double
// (1 - beta_1, say) are rounded to T exactly as Keras rounds them.
struct AdamParams {
  double lr, beta1, beta2, epsilon;
  int64_t step;  // 1-based time step t
  bool amsgrad;
  bool grad_sq;  // AdamSlots::grad_sq given for at least one variable
  Semantics semantics;
  GradientTransform gradient;
};

struct SgdParams {
  double lr, momentum;
  bool use_momentum;  // momentum slots present
  bool nesterov;
  Semantics semantics;
  GradientTransform gradient;
};

struct RmsPropParams {
  double lr, rho, momentum, epsilon;
  bool centered;      // average-gradient slots present
  bool use_momentum;  // momentum slots present
  bool grad_sq;       // RmsPropSlots::grad_sq given for at least one variable
  Semantics semantics;
  GradientTransform gradient;
};

// One variable and its slots: all arrays hold `size` elements. Optional slots are
// nullptr when the option is off. Distinct variables never alias (checked by the glue).
//
// grad_sq (Adam, RMSProp; optional, per variable) replaces g*g in the second-moment
// update. Keras squares each slice of a sparse gradient before summing duplicate
// indices (its ops.square acts on IndexedSlices values), so with repeated indices its
// second moment sees sum(g_k^2), not (sum g_k)^2; the Python layer passes that sum here
// in Keras semantics to stay identical to Keras. It is nullptr for the variables of the
// same call whose gradients are dense (one call updates dense and sparse alike).
template <typename T>
struct AdamSlots {
  T* var; T* m; T* v; T* vhat; const T* grad; const T* grad_sq; int64_t size;
};
template <typename T>
struct SgdSlots {
  T* var; T* momentum; const T* grad; int64_t size;
};
template <typename T>
struct RmsPropSlots {
  T* var; T* ms; T* mg; T* mom; const T* grad; const T* grad_sq; int64_t size;
};

// CPU backend: the whole list in one pass over memory, spread over `parallel`.
// Instantiated for Half, BFloat16, float and double.
template <typename T>
void AdamCpu(const AdamParams& p, const std::vector<AdamSlots<T>>& vars, const ParallelFor& parallel);
template <typename T>
void SgdCpu(const SgdParams& p, const std::vector<SgdSlots<T>>& vars, const ParallelFor& parallel);
template <typename T>
void RmsPropCpu(const RmsPropParams& p, const std::vector<RmsPropSlots<T>>& vars,
                const ParallelFor& parallel);

// Metal backend (optim_metal.mm, macOS only): MPSNNOptimizer* on MPSVectors over the
// variables' MTLBuffers. Float only. Returns kUnsupported for what MPS's classes do not
// express exactly (Keras semantics where MPS's formula differs; centered/momentum
// RMSProp; pointers that are not in Metal buffers): the caller then runs the CPU
// backend on the same unified memory.
BackendStatus AdamMetal(const AdamParams& p, const std::vector<AdamSlots<float>>& vars);
BackendStatus SgdMetal(const SgdParams& p, const std::vector<SgdSlots<float>>& vars);
BackendStatus RmsPropMetal(const RmsPropParams& p, const std::vector<RmsPropSlots<float>>& vars);

}  // namespace optim
}  // namespace tfmps

#endif  // TFMPS_OPTIM_OPTIM_H_
