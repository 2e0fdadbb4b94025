// 2-D convolution: the backend interface of the conv family.
//
// Layouts (row-major, innermost last):
//   input  x [N, H, W, C]                     NHWC
//   filter w [KH, KW, C/G, O]                 HWIO; G = groups, O divisible by G
//   bias   b [O]                              optional, fused
//   output y [N, OH, OW, O]                   NHWC
// Group g (0 <= g < G) reads input channels [g*Cg, (g+1)*Cg) and writes output channels
// [g*Og, (g+1)*Og), with Cg = C/G, Og = O/G. Depthwise is G == C (Cg == 1, channel
// multiplier Og): output channel o reads input channel o / Og, TF's depthwise order.
//
// Forward (cross-correlation, as tf.nn.conv2d), for o in group g:
//   z[n,i,j,o] = sum_{kh,kw,c<Cg} x[n, i*sh - pt + kh*dh, j*sw - pl + kw*dw, g*Cg + c]
//                                 * w[kh, kw, c, o]          (x outside the image = 0)
//   y = act(z + b[o]),  act = identity or relu
// Gradients (dy = dL/dy; the glue applies the activation's derivative before the call):
//   dx[n,h,v,g*Cg+c] = sum over (i,kh) with i*sh - pt + kh*dh = h, (j,kw) likewise,
//                      and o in group g, of dy[n,i,j,o] * w[kh,kw,c,o]
//   dw[kh,kw,c,o]    = sum_{n,i,j} x[n, i*sh - pt + kh*dh, j*sw - pl + kw*dw, g*Cg+c] * dy[n,i,j,o]
//   db[o]            = sum_{n,i,j} dy[n,i,j,o]
//
// Geometry (TF's rules; eff_k = (k-1)*d + 1 is the dilated filter extent):
//   VALID:    pads 0;  out = (in - eff_k) / s + 1, needs in >= eff_k
//   SAME:     out = ceil(in / s); total = max((out-1)*s + eff_k - in, 0);
//             before = total / 2, after = total - before
//   EXPLICIT: pads given; out = (in + before + after - eff_k) / s + 1, needs
//             in + before + after >= eff_k
// ComputeGeometry does this once, for every backend and the glue, with every product and
// sum checked against int64 overflow (and against the int range BLAS indexes with).
#ifndef TFMPS_CONV_CONV_H_
#define TFMPS_CONV_CONV_H_

#include <cstdint>
#include <string>

#include "ops/common/backend.h"

namespace tfmps {
namespace conv {

enum class Padding { kValid, kSame, kExplicit };
enum class Activation { kNone, kRelu };

// What the op's attributes and the shapes give; ComputeGeometry derives the rest.
struct Conv2DSpec {
  int64_t batch = 0, in_h = 0, in_w = 0, in_c = 0;      // input [N, H, W, C]
  int64_t k_h = 0, k_w = 0, filter_in_c = 0, out_c = 0;  // filter [KH, KW, C/G, O]
  int64_t stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  Padding padding = Padding::kValid;
  int64_t explicit_pads[4] = {0, 0, 0, 0};  // top, bottom, left, right (kExplicit only)
};

// Everything a backend needs to know about the shapes. Pads may be negative only in
// geometries that backends build internally (a transposed view of a gradient).
struct Conv2DGeometry {
  int64_t batch, in_h, in_w, in_c;
  int64_t k_h, k_w, out_c;
  int64_t groups, in_c_per_group, out_c_per_group;  // G, Cg, Og
  int64_t stride_h, stride_w, dilation_h, dilation_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int64_t out_h, out_w;

  int64_t patch() const { return k_h * k_w * in_c_per_group; }  // im2col row length of one group
  int64_t in_pixels() const { return batch * in_h * in_w; }
  int64_t out_pixels() const { return batch * out_h * out_w; }
  // One input channel per group (G == C): depthwise, channel multiplier Og.
  bool depthwise() const { return in_c_per_group == 1 && groups == in_c; }
};

// Validates `s` and fills `g`. Returns "" on success, else what is wrong, naming the
// argument ("strides", "dilations", "explicit_paddings", "input", "filter") in words the
// glue prefixes with the op's name.
std::string ComputeGeometry(const Conv2DSpec& s, Conv2DGeometry* g);

// One spatial dimension alone (`dim` = "height" or "width", for messages): the pads and
// the output size of an input of size `in` >= 1 under a filter of size k >= 1, or what
// is wrong. Shape functions use it when only some dimensions are known.
std::string ComputeOutputSize(const char* dim, int64_t in, int64_t k, int64_t stride, int64_t dilation,
                              Padding padding, int64_t explicit_before, int64_t explicit_after, int64_t* before,
                              int64_t* after, int64_t* out);

// ------------------------------------------------------------------ CPU backend
// Float32 (float16 data is converted by the glue; the half-accumulation model has its own
// entry points below). On x86, indirect-GEMM micro-kernels (AVX-512 or AVX2, chosen once
// per process); elsewhere and for narrow channel counts, im2col + BLAS sgemm; depthwise
// as direct loops (conv_cpu.cc says which takes what, and why). The backend parallelizes
// over `parallel` (TF's intra-op pool) itself and runs BLAS single-threaded (OpenBLAS's
// own threads spin and compete with TF's for the same cores). It needs a scratch buffer
// of the size its *Workspace function returns (floats), for `threads` = the most calls
// of `parallel`'s function that can run at once; the glue allocates it (TF's allocator
// caches it).
struct CpuContext {
  ParallelFor parallel;
  int threads = 1;
  float* workspace = nullptr;
  int64_t workspace_size = 0;  // floats
};

struct Conv2DForwardArgs {
  const float* input;   // [N, H, W, C]
  const float* filter;  // [KH, KW, Cg, O]
  const float* bias;    // [O] or nullptr
  Activation activation;
  float* output;        // [N, OH, OW, O]
};

struct Conv2DBackpropInputArgs {
  const float* filter;        // [KH, KW, Cg, O]
  const float* out_backprop;  // [N, OH, OW, O], already through the activation's derivative
  float* input_backprop;      // [N, H, W, C]
};

struct Conv2DBackpropFilterArgs {
  const float* input;         // [N, H, W, C]
  const float* out_backprop;  // [N, OH, OW, O], already through the activation's derivative
  float* filter_backprop;     // [KH, KW, Cg, O]
  float* bias_backprop;       // [O] or nullptr
};

int64_t Conv2DForwardCpuWorkspace(const Conv2DGeometry& g, int threads);
int64_t Conv2DBackpropInputCpuWorkspace(const Conv2DGeometry& g, int threads);
int64_t Conv2DBackpropFilterCpuWorkspace(const Conv2DGeometry& g, int threads, bool bias);

void Conv2DForwardCpu(const Conv2DGeometry& g, const Conv2DForwardArgs& a, const CpuContext& cpu);
void Conv2DBackpropInputCpu(const Conv2DGeometry& g, const Conv2DBackpropInputArgs& a, const CpuContext& cpu);
void Conv2DBackpropFilterCpu(const Conv2DGeometry& g, const Conv2DBackpropFilterArgs& a, const CpuContext& cpu);

// ------------------------------------------------- float16 and half accumulation
// float16 data. The glue converts float16 tensors to float32 (exact) and back (round to
// nearest even, overflow to inf), so every backend function above also serves float16
// with accumulator_precision "float32": computed in float32, rounded once at the end.
//
// accumulator_precision "float16" (Metal's MPSNNConvolutionAccumulatorPrecisionOptionHalf),
// emulated exactly by the *HalfAcc* functions below, one model for every reduction:
//   acc = +0 (half); for each term t of the reduction in its fixed order:
//     acc = round_to_half(acc + x_t * w_t)
// where x_t * w_t, a product of two halves, is exact in float32, the sum is rounded
// once from its exact value (round to nearest even, overflow to +-inf), and terms whose
// input pixel lies in the padding are skipped (they would add +-0). The orders:
//   forward    y[n,i,j,o]:   kh, kw, then c < Cg, increasing (taps inside the image)
//   dx         dx[n,h,v,c]:  kh, kw, then o < Og, increasing (taps that reach (h, v))
//   dw         dw[kh,kw,c,o]: n, i, j increasing (output pixels whose tap is inside)
//   db         db[o]:        n, i, j increasing, terms dy * 1
// Then (forward only) out = float32(acc) + bias[o] in float32, rounded to the output
// dtype by the glue, then the activation. Inputs must hold half values (the glue rounds
// float32 data to half first). Outputs are float32 holding half values (acc), or the
// float32 sum with the bias. No BLAS: vectorized over the output channels (forward, dw,
// db) or the input channels (dx) of a block, the reduction order kept per lane; F16C
// on x86 (conv_cpu_half.inc). A study tool: it shows on Linux what half accumulation
// does to a layer before running it on a Mac (docs/fp16-accumulation.md).
int64_t Conv2DForwardHalfAccCpuWorkspace(const Conv2DGeometry& g, int threads);
int64_t Conv2DBackpropInputHalfAccCpuWorkspace(const Conv2DGeometry& g, int threads);
int64_t Conv2DBackpropFilterHalfAccCpuWorkspace(const Conv2DGeometry& g, int threads, bool bias);
void Conv2DForwardHalfAccCpu(const Conv2DGeometry& g, const Conv2DForwardArgs& a, const CpuContext& cpu);
void Conv2DBackpropInputHalfAccCpu(const Conv2DGeometry& g, const Conv2DBackpropInputArgs& a, const CpuContext& cpu);
void Conv2DBackpropFilterHalfAccCpu(const Conv2DGeometry& g, const Conv2DBackpropFilterArgs& a,
                                    const CpuContext& cpu);

// Element-wise helpers for the glue (IEEE binary16 bit patterns as uint16_t), on
// `cpu.parallel`: exact half -> float; float -> half rounded to nearest even (overflow
// to inf, NaN stays NaN); and float -> nearest half value, kept as float.
void HalfToFloatCpu(const uint16_t* in, float* out, int64_t n, const CpuContext& cpu);
void FloatToHalfCpu(const float* in, uint16_t* out, int64_t n, const CpuContext& cpu);
void RoundToHalfCpu(const float* in, float* out, int64_t n, const CpuContext& cpu);

// y[r, :] = act(y[r, :] + bias) for rows r of a [rows, cols] array (bias: [cols] or
// nullptr): the transposed convolution's fused epilogue.
void BiasActivationCpu(float* y, int64_t rows, int64_t cols, const float* bias, Activation activation,
                       const CpuContext& cpu);

// Which build of the vectorized code runs: "avx512" (indirect GEMM on AVX-512, loops on
// AVX2), "avx2" or "base" (BLAS and portable loops); TFMPS_CONV_ISA=base|avx2 narrows it.
const char* ConvCpuIsa();

}  // namespace conv
}  // namespace tfmps

#endif  // TFMPS_CONV_CONV_H_
