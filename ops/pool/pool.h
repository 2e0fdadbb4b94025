// 2-D max and average pooling: the backend interface of the pool family.
//
// Layouts (row-major, innermost last):
//   input  x [N, H, W, C]        NHWC
//   output y [N, OH, OW, C]      NHWC
// Window of output (i, j): rows h = i*sh - pt + kh (0 <= kh < KH), columns
// v = j*sw - pl + kw (0 <= kw < KW); its cells inside the image are
//   S(i, j) = {(h, v) : 0 <= h < H, 0 <= v < W}      (never empty, see Geometry)
//
// Forward, per channel c:
//   max: y[n,i,j,c] = x[n, a(n,i,j,c), c], a = the first cell of S(i, j) in scan order
//        (kh, then kw, increasing) holding the maximum; a NaN counts as larger than every
//        number (the first NaN of the window wins, so NaN propagates)
//   avg: y[n,i,j,c] = (sum_{(h,v) in S(i,j)} x[n,h,v,c]) / |S(i,j)|   (padded cells are
//        not counted: tf.nn.avg_pool2d's rule)
// Gradients (dy = dL/dy, [N, OH, OW, C]; dx = dL/dx, [N, H, W, C]):
//   max: dx[n,h,v,c] = sum of dy[n,i,j,c] over the windows whose arg-max a(n,i,j,c) is
//        (h, v)  -- TF's CPU MaxPoolGrad: on ties, the first cell in scan order
//   avg: dx[n,h,v,c] = sum over the windows (i, j) with (h, v) in S(i, j) of
//        dy[n,i,j,c] / |S(i,j)|
// Second order: the max gradient is linear in dy; its derivative with respect to dy,
// applied to gg ([N, H, W, C]), gathers: ggy[n,i,j,c] = gg[n, a(n,i,j,c), c]
// (MaxPool2DGradGradCpu, TF's MaxPoolGradGrad). The avg gradient is linear in dy and its
// adjoint is the avg forward. The max gradient's derivative with respect to x is 0
// almost everywhere.
//
// Geometry (TF's rules, as tf.nn.max_pool2d):
//   VALID: pads 0;  out = (in - k) / s + 1, needs in >= k
//   SAME:  out = ceil(in / s); total = max((out-1)*s + k - in, 0);
//          before = total / 2, after = total - before
// Every window holds at least one cell of the image: VALID by construction; SAME since
// (out-1)*s < in gives total < k, so before < k and the first window reaches row 0, and
// the last window starts at (out-1)*s - before < in.
// ComputeGeometry checks this once for every backend and the glue, with the sizes that
// could overflow (ksize and strides above 2^31 - 1) rejected.
#ifndef TFMPS_POOL_POOL_H_
#define TFMPS_POOL_POOL_H_

#include <cstdint>
#include <string>

#include "ops/common/backend.h"

namespace tfmps {
namespace pool {

enum class Padding { kValid, kSame };

// What the op's attributes and the input shape give; ComputeGeometry derives the rest.
struct Pool2DSpec {
  int64_t batch = 0, in_h = 0, in_w = 0, channels = 0;  // input [N, H, W, C]
  int64_t k_h = 1, k_w = 1, stride_h = 1, stride_w = 1;
  Padding padding = Padding::kValid;
};

struct Pool2DGeometry {
  int64_t batch, in_h, in_w, channels;
  int64_t k_h, k_w, stride_h, stride_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int64_t out_h, out_w;

  int64_t in_size() const { return batch * in_h * in_w * channels; }
  int64_t out_size() const { return batch * out_h * out_w * channels; }
};

// Validates `s` (sizes >= 0, ksize and strides in [1, 2^31 - 1], VALID windows no larger
// than the input) and fills `g`. Returns "" on success, else what is wrong, naming the
// argument ("ksize", "strides", "input") in words the glue prefixes with the op's name.
// An empty input (a zero batch, height, width or channel count) is valid: its output is
// empty (a zero height or width gives out = 0 under SAME; under VALID it is an error,
// the window being larger than the input).
std::string ComputeGeometry(const Pool2DSpec& s, Pool2DGeometry* g);

// One spatial dimension alone (`dim` = "height" or "width", for messages), for shape
// functions that know only some dimensions: the output size, or what is wrong.
std::string ComputeOutputSize(const char* dim, int64_t in, int64_t k, int64_t stride, Padding padding,
                              int64_t* before, int64_t* after, int64_t* out);

// ------------------------------------------------------------------ CPU backend
// float32. float16 tensors are converted to float32 by the glue (exact, HalfToFloatCpu)
// and the results rounded to half once at the end (FloatToHalfCpu), so every backend
// function serves both. The loops are vectorized across the channel dimension, 16
// channels at a time in registers (two 8-float vectors) plus a tail; x86-64 runs an AVX2
// build of the same loops (PoolCpuIsa). Forward work units are output rows (n, i) across
// `parallel`. The gradients scatter into dx from windows that may overlap; their units are
// bands of output rows, and band [i0, i1) owns the dx rows [RowStart(i0), RowStart(i1))
// (a partition of [0, H), RowStart(i) = clamp(i*sh - pt, 0, H)): it zeroes them (in
// cache) and accumulates every window that reaches them, including the few windows of
// the previous band that straddle the boundary, whose arg-max it recomputes. So no two
// units write the same dx element, dx is written once, and each dx element sums its terms
// in a fixed order (i, then j increasing): results do not depend on the thread count.
// Windows that tile the input exactly (KH == sh, KW == sw, no padding, no leftover)
// store dx directly, without zeroing; in the AVX2 build, a dx of 16 MB or more (channels
// a multiple of 8) with non-temporal stores, skipping the read of every line it writes
// (avg gradient N4 128x128 C64 2x2: about 2.5x less CPU time, max gradient about 15%).
void MaxPool2DCpu(const Pool2DGeometry& g, const float* x, float* y, const ParallelFor& parallel);
void AvgPool2DCpu(const Pool2DGeometry& g, const float* x, float* y, const ParallelFor& parallel);
// dx from x (for the arg-max) and dy.
void MaxPool2DGradCpu(const Pool2DGeometry& g, const float* x, const float* dy, float* dx,
                      const ParallelFor& parallel);
void AvgPool2DGradCpu(const Pool2DGeometry& g, const float* dy, float* dx, const ParallelFor& parallel);
// ggy [N, OH, OW, C] from x (for the arg-max) and gg [N, H, W, C].
void MaxPool2DGradGradCpu(const Pool2DGeometry& g, const float* x, const float* gg, float* ggy,
                          const ParallelFor& parallel);

// Max pooling that also keeps its arg-max for the gradient (the forward of a training
// step): argmax[n,i,j,c] = the tap counter of a(n,i,j,c) in its clipped window, in scan
// order ((kh - kh0) * width + (kw - kw0)), as uint8. The gradient from it reads a quarter
// of dy's bytes and recomputes nothing, instead of reading all of x and finding every
// arg-max again; it equals MaxPool2DGradCpu's bit for bit (a counter that is no tap of
// its window routes nothing). Needs windows of at most 256 cells inside the image.
bool ArgmaxFits(const Pool2DGeometry& g);
void MaxPool2DArgmaxCpu(const Pool2DGeometry& g, const float* x, float* y, uint8_t* argmax,
                        const ParallelFor& parallel);
void MaxPool2DGradArgmaxCpu(const Pool2DGeometry& g, const uint8_t* argmax, const float* dy, float* dx,
                            const ParallelFor& parallel);

// IEEE binary16 (bit patterns) <-> float32 for the glue's float16 path, on `parallel`:
// half -> float exact; float -> half rounded to nearest even, overflow to inf. The AVX2
// build converts with F16C, the portable one with integer arithmetic only (so that a
// thread flushing denormals to zero, as TF's pool threads do, still converts subnormals;
// F16C ignores those modes); a NaN becomes 0x7e00 (sign kept, as Eigen::half) in the
// portable build and keeps its quieted payload with F16C.
void HalfToFloatCpu(const uint16_t* in, float* out, int64_t n, const ParallelFor& parallel);
void FloatToHalfCpu(const float* in, uint16_t* out, int64_t n, const ParallelFor& parallel);

// Which build of the vectorized loops runs: "avx2" (x86-64 with AVX2, FMA and F16C) or "base";
// TFMPS_POOL_ISA=base forces the portable one. Chosen once per process.
const char* PoolCpuIsa();

}  // namespace pool
}  // namespace tfmps

#endif  // TFMPS_POOL_POOL_H_
