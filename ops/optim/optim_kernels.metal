// tf-mps's own Metal kernels for the updates no MPSNNOptimizer expresses exactly: Keras's
// Adam, SGD with momentum or Nesterov and RMSProp (the default semantics of the Keras
// classes), and centered/momentum RMSProp in MPS's rule set. Float32, one thread per
// element, operation for operation the CPU backend's loops (optim_cpu.cc), so results
// are the CPU backend's when the compiler contracts and reorders nothing: optim_metal.mm
// compiles this source with MTLMathModeSafe (fastMathEnabled = NO before macOS 15).
//
// Written in the subset of the Metal Shading Language that emulation/shaders/ also
// compiles as C++ (docs/metal-emulation.md): buffer indices are the parameters'
// positions, the thread position comes last, no vector types, no threadgroup memory.
// On Linux these kernels run per thread index on the emulation; nothing here has been
// compiled by Apple's Metal compiler yet.
#include <metal_stdlib>
using namespace metal;

#include "ops/optim/optim_kernels.h"

inline float tfmps_gradient(float g, float w, constant TfmpsGradientArgs& o) {
  if (o.transform == 0) return g;
  if (o.clip != 0) g = g < o.clip_lo ? o.clip_lo : (g > o.clip_hi ? o.clip_hi : g);
  g = g * o.rescale;
  // sign(w) as tf.sign: NaN for a NaN weight.
  if (o.regularization == 1) g = g + o.scale * (w != w ? w : float((w > 0.0f) - (w < 0.0f)));
  if (o.regularization == 2) g = g + o.scale * w;
  return g;
}

// max that propagates a NaN in either argument, like tf.maximum (metal::max does not).
inline float tfmps_nan_max(float a, float b) {
  return (a != a || b != b) ? a + b : (a > b ? a : b);
}

// vhat and g2 are bound to var when their option is off (never read then).
kernel void tfmps_adam_f32(device float* w [[buffer(0)]],
                           device float* m [[buffer(1)]],
                           device float* v [[buffer(2)]],
                           device float* vhat [[buffer(3)]],
                           device const float* grad [[buffer(4)]],
                           device const float* g2 [[buffer(5)]],
                           constant TfmpsAdamArgs& a [[buffer(6)]],
                           uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const float wi = w[i], m0 = m[i], v0 = v[i];
  const float g = tfmps_gradient(grad[i], wi, a.gradient);
  const float gg = a.grad_sq != 0 ? g2[i] : g * g;
  const float mi = m0 + (g - m0) * a.omb1;
  float vi = v0 + (gg - v0) * a.omb2;
  m[i] = mi;
  v[i] = vi;
  if (a.amsgrad != 0) {
    vi = tfmps_nan_max(vhat[i], vi);
    vhat[i] = vi;
  }
  w[i] = wi - (mi * a.alpha) / (sqrt(vi) + a.eps);
}

kernel void tfmps_sgd_f32(device float* w [[buffer(0)]],
                          device float* m [[buffer(1)]],
                          device const float* grad [[buffer(2)]],
                          constant TfmpsSgdArgs& a [[buffer(3)]],
                          uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const float wi = w[i];
  const float g = tfmps_gradient(grad[i], wi, a.gradient);
  const float mi = m[i] * a.mu - g * a.lr;
  m[i] = mi;
  w[i] = a.mode == 2 ? wi + (mi * a.mu - g * a.lr) : wi + mi;
}

// mg, mom and g2 are bound to var when their option is off (never read then).
kernel void tfmps_rmsprop_f32(device float* w [[buffer(0)]],
                              device float* ms [[buffer(1)]],
                              device float* mg [[buffer(2)]],
                              device float* mom [[buffer(3)]],
                              device const float* grad [[buffer(4)]],
                              device const float* g2 [[buffer(5)]],
                              constant TfmpsRmsPropArgs& a [[buffer(6)]],
                              uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const float wi = w[i];
  const float g = tfmps_gradient(grad[i], wi, a.gradient);
  const float si = a.rho * ms[i] + a.omr * (a.grad_sq != 0 ? g2[i] : g * g);
  ms[i] = si;
  float d;
  if (a.centered != 0) {
    const float ai = a.rho * mg[i] + a.omr * g;
    mg[i] = ai;
    d = a.keras != 0 ? (si - ai * ai) + a.eps : sqrt(si - ai * ai) + a.eps;
  } else {
    d = a.keras != 0 ? si + a.eps : sqrt(si) + a.eps;
  }
  const float inc = a.keras != 0 ? (a.lr * g) / sqrt(d) : (a.lr * g) / d;
  if (a.momentum != 0) {
    const float mi = a.mu * mom[i] + inc;
    mom[i] = mi;
    w[i] = wi - mi;
  } else {
    w[i] = wi - inc;
  }
}
