// The CPU backend of max and average pooling (pool.h), and the geometry every backend
// and the glue share.
//
// Shapes of the loops: one work unit is one output row (n, i); inside it, for each output
// pixel j, the taps of the window clipped to the image run in scan order (kh, then kw)
// and each tap is one pass over the C channels of an input pixel, contiguous in NHWC, so
// every inner loop is a unit-stride loop over channels that the compiler vectorizes (the
// pixel's channels stay in L1 between taps). Max needs the arg-max per channel for its
// gradients: a running best value and tap counter per lane, over blocks of kBlock
// channels held on the stack.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ops/pool/pool.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#endif

namespace tfmps {
namespace pool {
namespace {

std::string Str(int64_t v) { return std::to_string(v); }

constexpr int64_t kMaxAttr = INT32_MAX;  // ksize and strides: keeps every product below in int64

}  // namespace

std::string ComputeOutputSize(const char* dim, int64_t in, int64_t k, int64_t stride, Padding padding,
                              int64_t* before, int64_t* after, int64_t* out) {
  if (k < 1 || k > kMaxAttr) {
    return std::string("ksize must be in [1, 2147483647] in ") + dim + ", got " + Str(k);
  }
  if (stride < 1 || stride > kMaxAttr) {
    return std::string("strides must be in [1, 2147483647] in ") + dim + ", got " + Str(stride);
  }
  if (in < 0) return std::string("input ") + dim + " must be >= 0, got " + Str(in);
  if (padding == Padding::kSame) {
    *out = in == 0 ? 0 : (in - 1) / stride + 1;  // ceil(in / stride)
    const int64_t span = in == 0 ? 0 : (*out - 1) * stride + k;  // < in + k: no overflow
    const int64_t total = span > in ? span - in : 0;
    *before = total / 2;
    *after = total - *before;
    return "";
  }
  *before = *after = 0;
  if (in < k) {
    return std::string("the window is larger than the input under VALID padding: ksize ") + dim + " " + Str(k) +
           " > input " + dim + " " + Str(in);
  }
  *out = (in - k) / stride + 1;
  return "";
}

std::string ComputeGeometry(const Pool2DSpec& s, Pool2DGeometry* g) {
  if (s.batch < 0 || s.channels < 0) {
    return "input sizes must be >= 0, got batch " + Str(s.batch) + " and channels " + Str(s.channels);
  }
  g->batch = s.batch;
  g->in_h = s.in_h;
  g->in_w = s.in_w;
  g->channels = s.channels;
  g->k_h = s.k_h;
  g->k_w = s.k_w;
  g->stride_h = s.stride_h;
  g->stride_w = s.stride_w;
  std::string e = ComputeOutputSize("height", s.in_h, s.k_h, s.stride_h, s.padding, &g->pad_top, &g->pad_bottom,
                                    &g->out_h);
  if (e.empty()) {
    e = ComputeOutputSize("width", s.in_w, s.k_w, s.stride_w, s.padding, &g->pad_left, &g->pad_right, &g->out_w);
  }
  if (!e.empty()) return e;
  // Tap counters are int32: the part of a window inside the image must fit.
  if (std::min(s.k_h, s.in_h) * std::min(s.k_w, s.in_w) > INT32_MAX) {
    return "ksize: a window covers more than 2^31 - 1 cells of the input (ksize " + Str(s.k_h) + "x" + Str(s.k_w) +
           ", input " + Str(s.in_h) + "x" + Str(s.in_w) + ")";
  }
  return "";
}

bool ArgmaxFits(const Pool2DGeometry& g) { return std::min(g.k_h, g.in_h) * std::min(g.k_w, g.in_w) <= 256; }

#if defined(__GNUC__) && !defined(__clang__)
// The portable build passes 32-byte vectors between its own inline functions only.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace isa_base {
#include "ops/pool/pool_kernels.inc"  // NOLINT(build/include)
}  // namespace isa_base

// GCC only (as the converters): Clang has no #pragma GCC target; there the portable build runs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TFMPS_POOL_HAVE_AVX2_BUILD 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace isa_avx2 {
#define TFMPS_POOL_AVX2 1
#include "ops/pool/pool_kernels.inc"  // NOLINT(build/include)
#undef TFMPS_POOL_AVX2
}  // namespace isa_avx2
#pragma GCC pop_options
#endif

namespace {
// Whether the AVX2 build runs: decided once, on first use; TFMPS_POOL_ISA=base forces the
// portable one (tests run both).
bool UseAvx2Build() {
#if defined(TFMPS_POOL_HAVE_AVX2_BUILD)
  static const bool avx2 = [] {
    const char* isa = std::getenv("TFMPS_POOL_ISA");
    const bool forced_base = isa != nullptr && std::strcmp(isa, "base") == 0;
    return !forced_base && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return avx2;
#else
  return false;
#endif
}
}  // namespace

#if defined(TFMPS_POOL_HAVE_AVX2_BUILD)
#define TFMPS_POOL_DISPATCH(fn, ...) \
  (UseAvx2Build() ? isa_avx2::fn##Impl(__VA_ARGS__) : isa_base::fn##Impl(__VA_ARGS__))
#else
#define TFMPS_POOL_DISPATCH(fn, ...) isa_base::fn##Impl(__VA_ARGS__)
#endif

void MaxPool2DCpu(const Pool2DGeometry& g, const float* x, float* y, const ParallelFor& parallel) {
  TFMPS_POOL_DISPATCH(MaxPool2DCpu, g, x, y, parallel);
}
void AvgPool2DCpu(const Pool2DGeometry& g, const float* x, float* y, const ParallelFor& parallel) {
  TFMPS_POOL_DISPATCH(AvgPool2DCpu, g, x, y, parallel);
}
void MaxPool2DGradCpu(const Pool2DGeometry& g, const float* x, const float* dy, float* dx,
                      const ParallelFor& parallel) {
  TFMPS_POOL_DISPATCH(MaxPool2DGradCpu, g, x, dy, dx, parallel);
}
void AvgPool2DGradCpu(const Pool2DGeometry& g, const float* dy, float* dx, const ParallelFor& parallel) {
  TFMPS_POOL_DISPATCH(AvgPool2DGradCpu, g, dy, dx, parallel);
}
void MaxPool2DGradGradCpu(const Pool2DGeometry& g, const float* x, const float* gg, float* ggy,
                          const ParallelFor& parallel) {
  TFMPS_POOL_DISPATCH(MaxPool2DGradGradCpu, g, x, gg, ggy, parallel);
}
void MaxPool2DArgmaxCpu(const Pool2DGeometry& g, const float* x, float* y, uint8_t* argmax,
                        const ParallelFor& parallel) {
  TFMPS_POOL_DISPATCH(MaxPool2DArgmaxCpu, g, x, y, argmax, parallel);
}
void MaxPool2DGradArgmaxCpu(const Pool2DGeometry& g, const uint8_t* argmax, const float* dy, float* dx,
                            const ParallelFor& parallel) {
  TFMPS_POOL_DISPATCH(MaxPool2DGradArgmaxCpu, g, argmax, dy, dx, parallel);
}
void HalfToFloatCpu(const uint16_t* in, float* out, int64_t n, const ParallelFor& parallel) {
  TFMPS_POOL_DISPATCH(HalfToFloatCpu, in, out, n, parallel);
}
void FloatToHalfCpu(const float* in, uint16_t* out, int64_t n, const ParallelFor& parallel) {
  TFMPS_POOL_DISPATCH(FloatToHalfCpu, in, out, n, parallel);
}
#undef TFMPS_POOL_DISPATCH

const char* PoolCpuIsa() { return UseAvx2Build() ? "avx2" : "base"; }

}  // namespace pool
}  // namespace tfmps
