// The tf-mps device's own Metal kernels for standard TensorFlow ops (device_kernels.cc):
// element-wise ops with broadcasting, fills, reductions, softmax and sparse softmax
// cross entropy, float32, one thread per output element (per row for the row ops).
//
// Written in the subset of the Metal Shading Language that emulation/shaders/ also
// compiles as C++ (docs/metal-emulation.md). Compiled with MTLMathModeSafe: + - * / and
// sqrt round as IEEE float does, so those ops give TensorFlow's CPU results bit for bit;
// exp, log, tanh and pow are the platform's (within a few ulps of TensorFlow's Eigen
// approximations). On Linux these run on the emulation; nothing here has been compiled by
// Apple's Metal compiler yet.
#ifndef TFMPS_METAL_AS_CPP  // device_ops_cpu.cc provides what it needs itself
#include <metal_stdlib>
#endif
using namespace metal;

#include "ops/device/device_kernels.h"

inline float tfmps_unary(tfmps_u32 op, float x) {
  switch (op) {
    case TFMPS_UNARY_NEG: return -x;
    case TFMPS_UNARY_SQUARE: return x * x;
    case TFMPS_UNARY_SQRT: return sqrt(x);
    case TFMPS_UNARY_RSQRT: return 1.0f / sqrt(x);
    case TFMPS_UNARY_EXP: return exp(x);
    case TFMPS_UNARY_LOG: return log(x);
    case TFMPS_UNARY_RELU: return x > 0.0f ? x : (x != x ? x : 0.0f);
    case TFMPS_UNARY_ABS: return fabs(x);
    case TFMPS_UNARY_TANH: return tanh(x);
    case TFMPS_UNARY_SIGMOID: return 1.0f / (1.0f + exp(-x));
    case TFMPS_UNARY_RECIPROCAL: return 1.0f / x;
    case TFMPS_UNARY_SIGN: return x != x ? x : float((x > 0.0f) - (x < 0.0f));
    default: break;
  }
  return x;
}

// NaN-propagating max/min, like tf.maximum/tf.minimum.
inline float tfmps_max(float a, float b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }
inline float tfmps_min(float a, float b) { return (a != a || b != b) ? a + b : (a < b ? a : b); }

inline float tfmps_binary(tfmps_u32 op, float x, float y) {
  switch (op) {
    case TFMPS_BINARY_ADD: return x + y;
    case TFMPS_BINARY_SUB: return x - y;
    case TFMPS_BINARY_MUL: return x * y;
    case TFMPS_BINARY_DIV: return x / y;
    case TFMPS_BINARY_DIV_NO_NAN: return y == 0.0f ? 0.0f : x / y;
    case TFMPS_BINARY_MAXIMUM: return tfmps_max(x, y);
    case TFMPS_BINARY_MINIMUM: return tfmps_min(x, y);
    case TFMPS_BINARY_SQUARED_DIFFERENCE: return (x - y) * (x - y);
    case TFMPS_BINARY_POW: return pow(x, y);
    case TFMPS_BINARY_RELU_GRAD: return y > 0.0f ? x : 0.0f;
    default: break;
  }
  return x;
}

// Every element-wise kernel computes in float and stores in T (float or half): for half
// that is what TensorFlow's CPU kernels do with Eigen::half (each operation in float,
// rounded to half once), so one rounding per element gives their results.
template <typename T>
inline void tfmps_unary_t(device const T* x, device T* y, constant TfmpsEltwiseArgs& a, uint i) {
  if (i >= a.n) return;
  y[i] = T(tfmps_unary(a.op, float(x[i])));
}

template <typename T>
inline void tfmps_binary_t(device const T* x, device const T* y, device T* z, constant TfmpsEltwiseArgs& a,
                           uint i) {
  if (i >= a.n) return;
  tfmps_u32 rest = i, xi = 0, yi = 0;
  for (int d = int(a.rank) - 1; d >= 0; --d) {
    const tfmps_u32 c = rest % a.dims[d];
    rest = rest / a.dims[d];
    xi += c * a.xs[d];
    yi += c * a.ys[d];
  }
  z[i] = T(tfmps_binary(a.op, float(x[xi]), float(y[yi])));
}

template <typename T>
inline void tfmps_fill_t(device T* y, constant TfmpsEltwiseArgs& a, uint i) {
  if (i >= a.n) return;
  y[i] = T(a.value);
}

// One thread per (outer, inner) output element, summing in index order, in float.
template <typename T>
inline void tfmps_reduce_sum_t(device const T* x, device T* y, constant TfmpsReduceArgs& a, uint i) {
  if (i >= a.outer * a.inner) return;
  const tfmps_u32 o = i / a.inner, in = i % a.inner;
  float sum = 0.0f;
  for (tfmps_u32 r = 0; r < a.reduce; ++r) sum += float(x[(o * a.reduce + r) * a.inner + in]);
  y[i] = T(a.divisor == 1.0f ? sum : sum / a.divisor);
}

// One thread per row: y = softmax(x) (log softmax when a.log), max-subtracted, in float.
template <typename T>
inline void tfmps_softmax_t(device const T* x, device T* y, constant TfmpsRowsArgs& a, uint r) {
  if (r >= a.rows) return;
  device const T* row = x + r * a.cols;
  device T* out = y + r * a.cols;
  float m = float(row[0]);
  for (tfmps_u32 c = 1; c < a.cols; ++c) m = tfmps_max(m, float(row[c]));
  float sum = 0.0f;
  for (tfmps_u32 c = 0; c < a.cols; ++c) sum += exp(float(row[c]) - m);
  if (a.log != 0) {
    const float ls = log(sum);
    for (tfmps_u32 c = 0; c < a.cols; ++c) out[c] = T((float(row[c]) - m) - ls);
  } else {
    for (tfmps_u32 c = 0; c < a.cols; ++c) out[c] = T(exp(float(row[c]) - m) / sum);
  }
}

kernel void tfmps_unary_f32(device const float* x [[buffer(0)]],
                            device float* y [[buffer(1)]],
                            constant TfmpsEltwiseArgs& a [[buffer(2)]],
                            uint i [[thread_position_in_grid]]) {
  tfmps_unary_t(x, y, a, i);
}

kernel void tfmps_unary_f16(device const half* x [[buffer(0)]],
                            device half* y [[buffer(1)]],
                            constant TfmpsEltwiseArgs& a [[buffer(2)]],
                            uint i [[thread_position_in_grid]]) {
  tfmps_unary_t(x, y, a, i);
}

kernel void tfmps_binary_f32(device const float* x [[buffer(0)]],
                             device const float* y [[buffer(1)]],
                             device float* z [[buffer(2)]],
                             constant TfmpsEltwiseArgs& a [[buffer(3)]],
                             uint i [[thread_position_in_grid]]) {
  tfmps_binary_t(x, y, z, a, i);
}

kernel void tfmps_binary_f16(device const half* x [[buffer(0)]],
                             device const half* y [[buffer(1)]],
                             device half* z [[buffer(2)]],
                             constant TfmpsEltwiseArgs& a [[buffer(3)]],
                             uint i [[thread_position_in_grid]]) {
  tfmps_binary_t(x, y, z, a, i);
}

kernel void tfmps_fill_f32(device float* y [[buffer(0)]],
                           constant TfmpsEltwiseArgs& a [[buffer(1)]],
                           uint i [[thread_position_in_grid]]) {
  tfmps_fill_t(y, a, i);
}

kernel void tfmps_fill_f16(device half* y [[buffer(0)]],
                           constant TfmpsEltwiseArgs& a [[buffer(1)]],
                           uint i [[thread_position_in_grid]]) {
  tfmps_fill_t(y, a, i);
}

kernel void tfmps_reduce_sum_f32(device const float* x [[buffer(0)]],
                                 device float* y [[buffer(1)]],
                                 constant TfmpsReduceArgs& a [[buffer(2)]],
                                 uint i [[thread_position_in_grid]]) {
  tfmps_reduce_sum_t(x, y, a, i);
}

kernel void tfmps_reduce_sum_f16(device const half* x [[buffer(0)]],
                                 device half* y [[buffer(1)]],
                                 constant TfmpsReduceArgs& a [[buffer(2)]],
                                 uint i [[thread_position_in_grid]]) {
  tfmps_reduce_sum_t(x, y, a, i);
}

kernel void tfmps_softmax_f32(device const float* x [[buffer(0)]],
                              device float* y [[buffer(1)]],
                              constant TfmpsRowsArgs& a [[buffer(2)]],
                              uint r [[thread_position_in_grid]]) {
  tfmps_softmax_t(x, y, a, r);
}

kernel void tfmps_softmax_f16(device const half* x [[buffer(0)]],
                              device half* y [[buffer(1)]],
                              constant TfmpsRowsArgs& a [[buffer(2)]],
                              uint r [[thread_position_in_grid]]) {
  tfmps_softmax_t(x, y, a, r);
}

// One thread per row: loss = logsumexp(x) - x[label]; backprop = softmax(x) - onehot.
// Labels outside [0, cols) give NaN, as TensorFlow's GPU kernel does.
kernel void tfmps_sparse_xent_i32_f32(device const float* x [[buffer(0)]],
                                  device const int* labels [[buffer(1)]],
                                  device float* loss [[buffer(2)]],
                                  device float* backprop [[buffer(3)]],
                                  constant TfmpsRowsArgs& a [[buffer(4)]],
                                  uint r [[thread_position_in_grid]]) {
  if (r >= a.rows) return;
  device const float* row = x + r * a.cols;
  device float* bp = backprop + r * a.cols;
  const int label = labels[r];
  const bool valid = label >= 0 && tfmps_u32(label) < a.cols;
  float m = row[0];
  for (tfmps_u32 c = 1; c < a.cols; ++c) m = tfmps_max(m, row[c]);
  float sum = 0.0f;
  for (tfmps_u32 c = 0; c < a.cols; ++c) sum += exp(row[c] - m);
  const float ls = log(sum);
  const float nan = 0.0f / 0.0f;
  for (tfmps_u32 c = 0; c < a.cols; ++c) {
    const float p = exp((row[c] - m) - ls);
    bp[c] = valid ? p - (tfmps_u32(label) == c ? 1.0f : 0.0f) : nan;
  }
  loss[r] = valid ? ls - (row[label] - m) : nan;
}

// The same with int64 labels.
kernel void tfmps_sparse_xent_i64_f32(device const float* x [[buffer(0)]],
                                  device const long* labels [[buffer(1)]],
                                  device float* loss [[buffer(2)]],
                                  device float* backprop [[buffer(3)]],
                                  constant TfmpsRowsArgs& a [[buffer(4)]],
                                  uint r [[thread_position_in_grid]]) {
  if (r >= a.rows) return;
  device const float* row = x + r * a.cols;
  device float* bp = backprop + r * a.cols;
  const long label = labels[r];
  const bool valid = label >= 0 && tfmps_u32(label) < a.cols;
  float m = row[0];
  for (tfmps_u32 c = 1; c < a.cols; ++c) m = tfmps_max(m, row[c]);
  float sum = 0.0f;
  for (tfmps_u32 c = 0; c < a.cols; ++c) sum += exp(row[c] - m);
  const float ls = log(sum);
  const float nan = 0.0f / 0.0f;
  for (tfmps_u32 c = 0; c < a.cols; ++c) {
    const float p = exp((row[c] - m) - ls);
    bp[c] = valid ? p - (tfmps_u32(label) == c ? 1.0f : 0.0f) : nan;
  }
  loss[r] = valid ? ls - (row[label] - m) : nan;
}

// Cast: one kernel per (source, destination) pair. float -> integer truncates toward
// zero (C's and TensorFlow's static_cast; NaN and out-of-range values are undefined in
// both, and may differ); bool is one byte, 0 or 1.
kernel void tfmps_cast_i64_f32(device const long* x [[buffer(0)]],
                              device float* y [[buffer(1)]],
                              constant TfmpsEltwiseArgs& a [[buffer(2)]],
                              uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const long v = x[i];
  y[i] = float(v);
}

kernel void tfmps_cast_i32_f32(device const int* x [[buffer(0)]],
                              device float* y [[buffer(1)]],
                              constant TfmpsEltwiseArgs& a [[buffer(2)]],
                              uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const int v = x[i];
  y[i] = float(v);
}

kernel void tfmps_cast_bool_f32(device const uchar* x [[buffer(0)]],
                               device float* y [[buffer(1)]],
                               constant TfmpsEltwiseArgs& a [[buffer(2)]],
                               uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const uchar v = x[i];
  y[i] = v != 0 ? 1.0f : 0.0f;
}

kernel void tfmps_cast_f32_i64(device const float* x [[buffer(0)]],
                              device long* y [[buffer(1)]],
                              constant TfmpsEltwiseArgs& a [[buffer(2)]],
                              uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const float v = x[i];
  y[i] = long(v);
}

kernel void tfmps_cast_f32_i32(device const float* x [[buffer(0)]],
                              device int* y [[buffer(1)]],
                              constant TfmpsEltwiseArgs& a [[buffer(2)]],
                              uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const float v = x[i];
  y[i] = int(v);
}

kernel void tfmps_cast_f32_bool(device const float* x [[buffer(0)]],
                               device uchar* y [[buffer(1)]],
                               constant TfmpsEltwiseArgs& a [[buffer(2)]],
                               uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const float v = x[i];
  y[i] = v != 0.0f ? uchar(1) : uchar(0);
}

kernel void tfmps_cast_i64_i32(device const long* x [[buffer(0)]],
                              device int* y [[buffer(1)]],
                              constant TfmpsEltwiseArgs& a [[buffer(2)]],
                              uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const long v = x[i];
  y[i] = int(v);
}

kernel void tfmps_cast_i32_i64(device const int* x [[buffer(0)]],
                              device long* y [[buffer(1)]],
                              constant TfmpsEltwiseArgs& a [[buffer(2)]],
                              uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const int v = x[i];
  y[i] = long(v);
}

// ResourceGather: out[k, j] = params[idx[k], j] for rows of `row` elements; the indices
// were checked on the host (in [0, rows)).
kernel void tfmps_gather_f32(device const float* params [[buffer(0)]],
                             device const int* idx [[buffer(1)]],
                             device float* out [[buffer(2)]],
                             constant TfmpsIndexedArgs& a [[buffer(3)]],
                             uint i [[thread_position_in_grid]]) {
  if (i >= a.count * a.row) return;
  const tfmps_u32 k = i / a.row, j = i % a.row;
  out[i] = params[tfmps_u32(idx[k]) * a.row + j];
}

// ResourceScatterAdd/Sub/Update: one thread per column j walks the indices in order, so
// repeated indices accumulate (add, sub) or the last one wins (update), race-free.
// a.scalar: every update is updates[0].
kernel void tfmps_scatter_f32(device float* var [[buffer(0)]],
                              device const int* idx [[buffer(1)]],
                              device const float* updates [[buffer(2)]],
                              constant TfmpsIndexedArgs& a [[buffer(3)]],
                              uint j [[thread_position_in_grid]]) {
  if (j >= a.row) return;
  for (tfmps_u32 k = 0; k < a.count; ++k) {
    const float u = a.scalar != 0 ? updates[0] : updates[k * a.row + j];
    device float* w = var + tfmps_u32(idx[k]) * a.row + j;
    if (a.op == TFMPS_SCATTER_ADD) {
      *w = *w + u;
    } else if (a.op == TFMPS_SCATTER_SUB) {
      *w = *w - u;
    } else {
      *w = u;
    }
  }
}

kernel void tfmps_cast_f16_f32(device const half* x [[buffer(0)]],
                              device float* y [[buffer(1)]],
                              constant TfmpsEltwiseArgs& a [[buffer(2)]],
                              uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const half v = x[i];
  y[i] = float(v);
}

kernel void tfmps_cast_f32_f16(device const float* x [[buffer(0)]],
                              device half* y [[buffer(1)]],
                              constant TfmpsEltwiseArgs& a [[buffer(2)]],
                              uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  const float v = x[i];
  y[i] = half(v);
}

// A copy of n bytes, for sizes and offsets a blit cannot take (Metal wants multiples of 4
// for -copyFromBuffer:... on macOS).
kernel void tfmps_copy_bytes(device const uchar* x [[buffer(0)]],
                             device uchar* y [[buffer(1)]],
                             constant TfmpsEltwiseArgs& a [[buffer(2)]],
                             uint i [[thread_position_in_grid]]) {
  if (i >= a.n) return;
  y[i] = x[i];
}
