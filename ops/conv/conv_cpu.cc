// CPU backend of the conv family (conv.h): indirect GEMM micro-kernels on x86, GEMM on
// single-threaded BLAS everywhere else (and for narrow channel counts), direct loops for
// depthwise convolutions and (x86) for the forward pass with few input channels; all
// parallelized over TF's pool by this file.
//
// x86 (AVX-512 or AVX2 build, conv_cpu_igemm.inc): a register tile of output pixels x
// output channels sums every (tap, input channel) reading the source pixels through a
// pointer table (no im2col copy; a row of zeros for padding) against filter panels
// packed per call. The same kernel computes the forward pass and the input gradient
// (dx as a gather of dy per stride phase: each dx pixel sums the taps that reach it,
// so there is nothing to zero, add or skip), and a transposed tile the filter gradient.
// Measured on the 2-core AMD EPYC (Zen 4) it was written on, per core (thread CPU
// time): 100-108 GFLOP/s, where im2col + OpenBLAS sgemm reached 84-90 and TF's oneDNN
// kernels 106-111 (bench/conv.py compares them in one run).
//
// BLAS (every processor; on x86 for fewer than half a tile of output channels per group
// or sums shorter than kIgemmMinSum):
// Forward: the output pixels are cut into blocks of `rows` pixels (across images); a
//   block's patches are gathered (im2col) into its thread's scratch, [rows, KH*KW*Cg],
//   and one sgemm per group multiplies them by the filter, which in HWIO already is the
//   [KH*KW*Cg, O] matrix: y[block, group] = col x w[:, group] straight into the output
//   (ldc = O), then bias and activation while the block is in cache. A 1x1, stride-1,
//   unpadded convolution is the sgemm of the input rows themselves (no im2col).
// Filter gradient: dw = sum over blocks of col^T x dy, accumulated per work unit (a
//   fixed range of blocks: the result does not depend on which thread ran what) into
//   its own [KH*KW*Cg, O] partial, then summed in unit order; the bias gradient rides
//   along (sum of the dy rows of each block). The indirect GEMM's filter gradient uses
//   the same fixed units.
// Input gradient, whichever moves less data:
//   gather (stride 1): dx is the forward convolution of dy with the filter flipped in
//     space and transposed in channels ([KH, KW, Og, C]), padded by (KH-1)*dh - pt;
//     blocks of dx pixels in parallel, nothing to zero or add;
//   scatter (any stride, or few output channels per input channel): per image,
//     dcol = dy x w^T ([rows, KH*KW*Cg]) and col2im adds each patch row back into dx.
// Depthwise (Cg == 1): conv_cpu_loops.inc and conv_cpu_depthwise.inc, vectorized over
// channels, no GEMM.
// Half accumulation (accumulator_precision "float16", conv.h's model): conv_cpu_half.inc,
// a gather per destination pixel (forward, input gradient) or per filter row (filter
// gradient) with the filter packed in panels of kHalfLanes lanes, every step rounded
// exactly to half; portable or AVX2+F16C, both bit-identical.
//
// BLAS runs on one thread and this file spreads the blocks over TF's pool: on 2 cores,
// N16 56x56 C64->128 3x3 forward + both gradients on the BLAS path ran at 172 GFLOP/s
// so, 127-133 with one caller and OpenBLAS's 2 threads, 120-137 with both at 2 (its
// spinning workers compete with TF's for the cores); a loop of single-threaded sgemm
// blocks also beat one whole-layer sgemm per core (88-97 against 70-85 GFLOP/s).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "ops/common/blas.h"
#include "ops/conv/conv.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TFMPS_CONV_HAVE_X86_BUILDS 1
#include <immintrin.h>
#endif


namespace tfmps {
namespace conv {

// One destination grid of an indirect GEMM (conv_cpu_igemm.inc): destination pixel
// (n, dst_a0 + a*dst_a_step, dst_b0 + b*dst_b_step) for a < grid_a, b < grid_b, summed
// over taps (ta, tb) of the source pixel (n, a*src_a_step + off_a[ta], b*src_b_step +
// off_b[tb]) (zero outside the source image), group by group.
struct IgemmJob {
  int64_t batch, grid_a, grid_b;
  float* dst;
  int64_t dst_h, dst_w, dst_c, dst_a0, dst_a_step, dst_b0, dst_b_step;
  const float* src;
  int64_t src_h, src_w, src_c, src_a_step, src_b_step;
  const int64_t* off_a;
  const int64_t* off_b;
  int64_t taps_a, taps_b;
  int64_t groups, cin, cout;  // per group: source and destination channels
  const float* packed;        // [groups][ceil(cout / NR)][taps_a * taps_b * cin][NR], zero-padded
  const float* bias;          // [groups * cout] or nullptr
  bool relu;
  const float* zeros;         // src_c zeros: the source of every padding tap
  int64_t tiles_per_unit;
};

// The filter gradient's indirect GEMM: pixel p = (n, a, b) of the output grid
// [batch, out_h, out_w] reads x at (a*stride_a + off_a[ta], b*stride_b + off_b[tb]) per
// tap; work unit u sums blocks [u*blocks/units, (u+1)*blocks/units) into
// partials + u*partial_stride: [taps*cin][groups*cout], then (bias) [groups*cout].
struct IgemmFilterJob {
  int64_t batch, out_h, out_w;
  const float* x;
  int64_t in_h, in_w, in_c, stride_a, stride_b;
  const int64_t* off_a;
  const int64_t* off_b;
  int64_t taps_a, taps_b;
  const float* dy;
  int64_t groups, cin, cout;
  const float* zeros;
  int64_t block_pixels, blocks, units;
  float* partials;
  int64_t partial_stride;
  bool bias;
};

// One destination grid of the half-accumulation gather (conv_cpu_half.inc): pixel
// (n, a, b) of dst [batch, dst_h, dst_w, dst_c] sums, per group and lane, the terms
// (tap a, tap b, source channel k < cin) in increasing order, reading source pixel
// (n, src_a, src_b) of src [batch, src_h, src_w, src_c] with src_a = a*stride_a +
// ta*dil_a - pad_a (forward) or (a + pad_a - ta*dil_a) / stride_a where that divides
// (transposed: the input gradient); likewise b. packed[g][block][ta*k_b + tb][k][lane]
// holds the filter, `lanes` lanes per block (kHalfWideLanes for 48 or more destination
// channels per group, else kHalfLanes), zero past cout.
constexpr int kHalfLanes = 16, kHalfWideLanes = 64;
struct HalfGatherJob {
  bool transposed;
  int64_t lanes;
  int64_t batch, dst_h, dst_w, dst_c;
  float* dst;
  const float* src;
  int64_t src_h, src_w, src_c;
  int64_t k_a, k_b, stride_a, stride_b, dil_a, dil_b, pad_a, pad_b;
  int64_t groups, cin, cout;
  const float* packed;
  const float* bias;  // [groups * cout] or nullptr (forward)
  bool relu;
};

namespace isa_base {
#include "ops/conv/conv_cpu_loops.inc"  // NOLINT(build/include)
#include "ops/conv/conv_cpu_half.inc"   // NOLINT(build/include)
}  // namespace isa_base

#if defined(TFMPS_CONV_HAVE_X86_BUILDS)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
namespace isa_f16c {
#define TFMPS_CONV_F16C 1
#include "ops/conv/conv_cpu_half.inc"  // NOLINT(build/include)
#undef TFMPS_CONV_F16C
}  // namespace isa_f16c
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#if defined(TFMPS_CONV_HAVE_X86_BUILDS)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace isa_avx2 {
#define TFMPS_CONV_FMA 1
#include "ops/conv/conv_cpu_loops.inc"  // NOLINT(build/include)
#undef TFMPS_CONV_FMA
struct Vec {
  using V = __m256;
  static constexpr int kLanes = 8;
  static V Zero() { return _mm256_setzero_ps(); }
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static V Set1(float x) { return _mm256_set1_ps(x); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  // x < 0 ? 0 : x, keeping NaN (the comparison is false for NaN).
  static V Relu(V x) {
    return _mm256_blendv_ps(x, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  }
  static void Store(float* p, V x) { _mm256_storeu_ps(p, x); }
  // The first n lanes from p (masked: nothing past them is read), zeros after.
  static V LoadN(const float* p, int n) {
    if (n >= kLanes) return Load(p);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane));
  }
};
constexpr int kMR = 6, kNV = 2;    // 6 pixels x 2 vectors: 12 accumulators of 16 ymm registers
constexpr int kFMR = 6, kFNV = 2;  // filter gradient: 6 channels x 2 vectors
constexpr int kDwP = 4, kDwV = 2;  // depthwise: 4 pixels x 16 channels
constexpr int kNarP = 4, kNarV = 2;  // few input channels: 4 pixels x 16 output channels
#include "ops/conv/conv_cpu_igemm.inc"      // NOLINT(build/include)
#include "ops/conv/conv_cpu_depthwise.inc"  // NOLINT(build/include)
}  // namespace isa_avx2
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif
namespace isa_avx512 {
#define TFMPS_CONV_FMA 1
#include "ops/conv/conv_cpu_loops.inc"  // NOLINT(build/include)
#undef TFMPS_CONV_FMA
struct Vec {
  using V = __m512;
  static constexpr int kLanes = 16;
  static V Zero() { return _mm512_setzero_ps(); }
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static V Set1(float x) { return _mm512_set1_ps(x); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static V Relu(V x) { return _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ),
                                                 _mm512_setzero_ps()); }
  static void Store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static V LoadN(const float* p, int n) {
    if (n >= kLanes) return Load(p);
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << std::max(n, 0)) - 1), p);
  }
};
constexpr int kMR = 14, kNV = 2;    // 14 pixels x 2 vectors: 28 accumulators of 32 zmm registers
constexpr int kFMR = 14, kFNV = 2;  // filter gradient: 14 channels x 2 vectors
constexpr int kDwP = 6, kDwV = 4;  // depthwise: 6 pixels x 64 channels
constexpr int kNarP = 8, kNarV = 2;  // few input channels: 8 pixels x 32 output channels
#include "ops/conv/conv_cpu_igemm.inc"      // NOLINT(build/include)
#include "ops/conv/conv_cpu_depthwise.inc"  // NOLINT(build/include)
}  // namespace isa_avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace {

// The loops of one build (conv_cpu_loops.inc) and its indirect GEMM, if it has one.
struct Loops {
  decltype(&isa_base::BiasActivation) bias_activation;
  decltype(&isa_base::AddInto) add_into;
  decltype(&isa_base::SumRows) sum_rows;
  decltype(&isa_base::DepthwiseForwardRow) dw_forward_row;
  decltype(&isa_base::DepthwiseBackpropInputSlice) dw_backprop_input_slice;
  decltype(&isa_base::DepthwiseBackpropFilterRows) dw_backprop_filter_rows;
  void (*igemm_units)(const IgemmJob&, int64_t, int64_t, float*) = nullptr;
  void (*igemm_filter_units)(const IgemmFilterJob&, int64_t, int64_t, float*) = nullptr;
  int igemm_nr = 0, igemm_mr = 0;
  const char* name = "base";
  // The few-input-channel forward (conv_cpu_depthwise.inc); none: the BLAS path.
  decltype(&isa_base::DepthwiseForwardRow) narrow_forward_row = nullptr;
};

#define TFMPS_CONV_LOOPS(ns, dw_forward)                                                                     \
  ns::BiasActivation, ns::AddInto, ns::SumRows, ns::dw_forward, ns::DepthwiseBackpropInputSlice,           \
      ns::DepthwiseBackpropFilterRows

// The build that runs, chosen once: the widest the processor has, unless
// TFMPS_CONV_ISA=base|avx2|avx512 (read once) asks for a narrower one (tests run each).
const Loops& L() {
  static const Loops loops = [] {
    const char* env = std::getenv("TFMPS_CONV_ISA");
    const std::string want = env != nullptr ? env : "";
#if defined(TFMPS_CONV_HAVE_X86_BUILDS)
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && want != "base";
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && want != "avx2";
    if (avx512) {
      return Loops{TFMPS_CONV_LOOPS(isa_avx512, DepthwiseForwardRowVec), isa_avx512::IgemmUnits,
                   isa_avx512::IgemmFilterUnits, isa_avx512::kNR, isa_avx512::kMR, "avx512",
                   isa_avx512::NarrowForwardRowVec};
    }
    if (avx2) {
      return Loops{TFMPS_CONV_LOOPS(isa_avx2, DepthwiseForwardRowVec), isa_avx2::IgemmUnits,
                   isa_avx2::IgemmFilterUnits, isa_avx2::kNR, isa_avx2::kMR, "avx2",
                   isa_avx2::NarrowForwardRowVec};
    }
#endif
    return Loops{TFMPS_CONV_LOOPS(isa_base, DepthwiseForwardRow), nullptr, nullptr, 0, 0, "base"};
  }();
  return loops;
}

// ------------------------------------------------------------------------ tuning
// A block's im2col scratch: about 256 KB, which stays in L2 next to BLAS's packed panels.
constexpr int64_t kColBlockFloats = 64 * 1024;
constexpr int64_t kMinRows = 32, kMaxRows = 2048;
// Blocks per thread wanted for balance (a thread of the pool that starts late leaves
// its share to the others).
constexpr int64_t kBlocksPerThread = 4;
// Work units (each with its own partial filter gradient) per thread, and the most
// memory all partials together may take.
constexpr int64_t kUnitsPerThread = 2;
constexpr int64_t kMaxPartialFloats = 16 * 1024 * 1024;
// Cycles per multiply-add of the GEMM (for ParallelFor's split: a rough count).
constexpr int64_t kFlopsPerCycle = 16;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ParallelFor's cost per unit (cycles) from a count of multiply-adds, without overflow.
int64_t GemmCost(double madds) { return static_cast<int64_t>(std::min(2.0 * madds / kFlopsPerCycle, 1e9)) + 1; }

void EnsureSingleThreadedBlas() {
  if (blas::NumThreads() != 1) blas::SetNumThreads(1);
}

int64_t BlockRows(int64_t pixels, int64_t patch, int threads) {
  int64_t rows = std::clamp<int64_t>(kColBlockFloats / std::max<int64_t>(patch, 1), kMinRows, kMaxRows);
  rows = std::min(rows, std::max(kMinRows, CeilDiv(pixels, kBlocksPerThread * threads)));
  return std::max<int64_t>(1, std::min(rows, pixels));
}

int64_t FilterFloats(const Conv2DGeometry& g) { return g.k_h * g.k_w * g.in_c_per_group * g.out_c; }

bool Pointwise(const Conv2DGeometry& g) {
  return g.k_h == 1 && g.k_w == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_top == 0 && g.pad_left == 0 &&
         g.out_h == g.in_h && g.out_w == g.in_w;
}

// ------------------------------------------------------------------ scratch slots
// The workspace holds one scratch slot per thread that can run at once. A call of the
// ParallelFor function takes a free slot for its duration; there are never more calls
// at once than slots (CpuContext::threads), so Acquire does not wait in practice, and if
// it ever had to, it would only yield until a running call returns its slot.
class SlotPool {
 public:
  SlotPool(float* base, int64_t slot_floats, int slots)
      : base_(base), size_(slot_floats), free_(slots >= 64 ? ~uint64_t{0} : (uint64_t{1} << slots) - 1) {}

  int Acquire() {
    for (;;) {
      uint64_t f = free_.load(std::memory_order_acquire);
      while (f != 0) {
        const int i = __builtin_ctzll(f);
        if (free_.compare_exchange_weak(f, f & ~(uint64_t{1} << i), std::memory_order_acq_rel)) return i;
      }
      std::this_thread::yield();
    }
  }
  void Release(int i) { free_.fetch_or(uint64_t{1} << i, std::memory_order_release); }
  float* slot(int i) const { return base_ + i * size_; }

 private:
  float* base_;
  int64_t size_;
  std::atomic<uint64_t> free_;
};

class Lease {
 public:
  explicit Lease(SlotPool* pool) : pool_(pool), id_(pool->Acquire()) {}
  ~Lease() { pool_->Release(id_); }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  float* data() const { return pool_->slot(id_); }

 private:
  SlotPool* pool_;
  int id_;
};

int Slots(int threads) { return std::clamp(threads, 1, 64); }

// ------------------------------------------------------------------ im2col / col2im
// Pixel p of the output grid [N, OH, OW], stepped in order.
struct PixelIter {
  int64_t n, i, j, oh, ow;
  PixelIter(int64_t p, int64_t out_h, int64_t out_w) : oh(out_h), ow(out_w) {
    n = p / (out_h * out_w);
    const int64_t r = p % (out_h * out_w);
    i = r / out_w;
    j = r % out_w;
  }
  void Next() {
    if (++j == ow) {
      j = 0;
      if (++i == oh) {
        i = 0;
        ++n;
      }
    }
  }
};

inline void CopyFloats(float* __restrict dst, const float* __restrict src, int64_t n) {
  if (n >= 16) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  }
}
inline void ZeroFloats(float* dst, int64_t n) {
  if (n > 0) std::memset(dst, 0, n * sizeof(float));
}

// col[r, (kh*KW + kw)*Cg + c] = x[n, i*sh - pt + kh*dh, j*sw - pl + kw*dw, group*Cg + c]
// for the `rows` output pixels from p0 (zero outside the image).
void Im2Col(const Conv2DGeometry& g, const float* x, int64_t p0, int64_t rows, int64_t group, float* col) {
  const int64_t C = g.in_c, cg = g.in_c_per_group, KW = g.k_w, patch = g.patch();
  // With dw == 1 and one group, a filter row's taps read one contiguous run of input.
  const bool runs = g.dilation_w == 1 && cg == C;
  PixelIter it(p0, g.out_h, g.out_w);
  for (int64_t r = 0; r < rows; ++r, it.Next()) {
    float* dst = col + r * patch;
    const int64_t iw0 = it.j * g.stride_w - g.pad_left;
    int64_t lo, hi;
    isa_base::TapRange(iw0, g.dilation_w, g.in_w, g.k_w, &lo, &hi);
    for (int64_t kh = 0; kh < g.k_h; ++kh, dst += KW * cg) {
      const int64_t ih = it.i * g.stride_h - g.pad_top + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h || lo == hi) {
        ZeroFloats(dst, KW * cg);
        continue;
      }
      const float* src = x + (it.n * g.in_h + ih) * g.in_w * C + group * cg;
      ZeroFloats(dst, lo * cg);
      if (runs) {
        CopyFloats(dst + lo * cg, src + (iw0 + lo) * C, (hi - lo) * C);
      } else {
        for (int64_t kw = lo; kw < hi; ++kw) CopyFloats(dst + kw * cg, src + (iw0 + kw * g.dilation_w) * C, cg);
      }
      ZeroFloats(dst + hi * cg, (KW - hi) * cg);
    }
  }
}

// The adjoint of Im2Col: dx[...] += col[r, ...] for the same index map.
void Col2ImAdd(const Conv2DGeometry& g, const float* col, int64_t p0, int64_t rows, int64_t group, float* dx) {
  const int64_t C = g.in_c, cg = g.in_c_per_group, KW = g.k_w, patch = g.patch();
  const bool runs = g.dilation_w == 1 && cg == C;
  const Loops& loops = L();
  PixelIter it(p0, g.out_h, g.out_w);
  for (int64_t r = 0; r < rows; ++r, it.Next()) {
    const float* src = col + r * patch;
    const int64_t iw0 = it.j * g.stride_w - g.pad_left;
    int64_t lo, hi;
    isa_base::TapRange(iw0, g.dilation_w, g.in_w, g.k_w, &lo, &hi);
    for (int64_t kh = 0; kh < g.k_h; ++kh, src += KW * cg) {
      const int64_t ih = it.i * g.stride_h - g.pad_top + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h || lo == hi) continue;
      float* dst = dx + (it.n * g.in_h + ih) * g.in_w * C + group * cg;
      if (runs) {
        loops.add_into(dst + (iw0 + lo) * C, src + lo * cg, (hi - lo) * C);
      } else {
        for (int64_t kw = lo; kw < hi; ++kw) loops.add_into(dst + (iw0 + kw * g.dilation_w) * C, src + kw * cg, cg);
      }
    }
  }
}

// ------------------------------------------------------------------ indirect GEMM
// Where the build has one (x86: AVX2 or AVX-512), the indirect GEMM computes every
// convolution whose destination has at least half a tile of channels per group and
// whose sums are long enough (taps * source channels per group) to pay for a tile's
// pointer table (N64 28x28 C1->32 3x3: k = 9, forward 0.95 ms against BLAS's 0.71);
// the direct few-channel kernel (UseNarrow) and the BLAS paths below take the rest
// (and everything on other processors).
constexpr int64_t kIgemmMinSum = 32;
bool UseIgemm(int64_t dst_channels_per_group, int64_t sum_length) {
  return L().igemm_units != nullptr && 2 * dst_channels_per_group >= L().igemm_nr && sum_length >= kIgemmMinSum;
}

int64_t IgemmPackedFloats(int64_t groups, int64_t taps, int64_t cin, int64_t cout, int nr) {
  return groups * CeilDiv(cout, nr) * taps * cin * nr;
}
// A row of zeros as long as a source pixel, rounded to keep what follows aligned.
int64_t ZerosFloats(int64_t src_c) { return CeilDiv(src_c, 16) * 16; }
int64_t TilesPerUnit(int64_t pixels, int mr, int threads) {
  return std::clamp<int64_t>(CeilDiv(CeilDiv(pixels, mr), kBlocksPerThread * threads), 1, 16);
}
// A unit's pointer tables (IgemmUnits): [tile][tap][MR] sources and [tile][MR] destinations.
int64_t IgemmSlotFloats(int64_t tiles_per_unit, int64_t taps, int mr) {
  constexpr int64_t kFloatsPerPointer = sizeof(void*) / sizeof(float);
  return tiles_per_unit * (taps + 1) * mr * kFloatsPerPointer;
}

// Runs jobs (one ParallelFor over all their units) with scratch slots from `slots`.
void RunIgemm(const std::vector<IgemmJob>& jobs, float* slots, int64_t slot_floats, int slot_count,
              const CpuContext& cpu) {
  const int mr = L().igemm_mr;
  std::vector<int64_t> first_unit(jobs.size() + 1, 0);
  double madds = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const IgemmJob& job = jobs[j];
    const int64_t pixels = job.batch * job.grid_a * job.grid_b;
    first_unit[j + 1] = first_unit[j] + CeilDiv(CeilDiv(pixels, mr), job.tiles_per_unit);
    madds += double(pixels) * job.taps_a * job.taps_b * job.cin * job.cout * job.groups;
  }
  const int64_t units = first_unit.back();
  if (units == 0) return;
  SlotPool pool(slots, slot_floats, slot_count);
  const auto run = L().igemm_units;
  cpu.parallel(units, GemmCost(madds / units), [&](int64_t u0, int64_t u1) {
    Lease lease(&pool);
    for (size_t j = 0; j < jobs.size() && u0 < u1; ++j) {
      const int64_t a = std::max(u0, first_unit[j]), b = std::min(u1, first_unit[j + 1]);
      if (a < b) run(jobs[j], a - first_unit[j], b - first_unit[j], lease.data());
    }
  });
}

// packed[g][ob][k][j] = w[k*O + g*Og + ob*NR + j] (0 past Og): the forward's filter,
// [KH*KW*Cg, O] in HWIO, cut into NR-column panels per group.
void PackForward(const Conv2DGeometry& g, const float* w, float* packed, const CpuContext& cpu) {
  const int64_t nr = L().igemm_nr, og = g.out_c_per_group, K = g.patch(), O = g.out_c;
  const int64_t oblocks = CeilDiv(og, nr);
  cpu.parallel(g.groups * oblocks, K * nr, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t grp = u / oblocks, ob = u % oblocks, cols = std::min(nr, og - ob * nr);
      float* dst = packed + u * K * nr;
      const float* src = w + grp * og + ob * nr;
      for (int64_t k = 0; k < K; ++k, dst += nr) {
        for (int64_t j = 0; j < cols; ++j) dst[j] = src[k * O + j];
        for (int64_t j = cols; j < nr; ++j) dst[j] = 0.0f;
      }
    }
  });
}

// ------------------------------------------------------------------------ forward
struct ForwardPlan {
  bool depthwise = false, pointwise = false, igemm = false, narrow = false;
  int64_t rows = 0, blocks = 0, slot_floats = 0;
  int slots = 0;
  int64_t packed = 0, zeros = 0, tiles_per_unit = 0;  // igemm
  int64_t workspace() const { return packed + zeros + slot_floats * slots; }
};

// Depthwise when each group has one input channel and the loops beat GEMM: always for
// G > 1 (the GEMM would have k = KH*KW), and for C == 1 when the channel multiplier is
// short enough that the output row loop stays in registers and L1.
bool UseDepthwise(const Conv2DGeometry& g) {
  return g.depthwise() && g.groups > 1;
}

// The direct forward for few input channels (x86 builds): one group, sums too short for
// the indirect GEMM, and at least 8 output channels. N64 28x28 C1->32 3x3 forward on the
// 2-core Zen 4 (loaded by other sessions): 0.85-0.91 ms, TF's oneDNN 0.98-1.02 ms, the
// BLAS path about 1.4 ms. Both are bound by writing the 6.4 MB output, not by FLOPs.
bool UseNarrow(const Conv2DGeometry& g) {
  return L().narrow_forward_row != nullptr && g.groups == 1 && g.patch() < kIgemmMinSum && g.out_c >= 8;
}

ForwardPlan PlanForward(const Conv2DGeometry& g, int threads) {
  ForwardPlan p;
  if (g.out_pixels() == 0) return p;
  if (UseDepthwise(g)) {
    p.depthwise = true;
    return p;
  }
  if (UseIgemm(g.out_c_per_group, g.patch())) {
    const int nr = L().igemm_nr, mr = L().igemm_mr;
    p.igemm = true;
    p.packed = IgemmPackedFloats(g.groups, g.k_h * g.k_w, g.in_c_per_group, g.out_c_per_group, nr);
    p.zeros = ZerosFloats(g.in_c);
    p.tiles_per_unit = TilesPerUnit(g.out_pixels(), mr, threads);
    p.slot_floats = IgemmSlotFloats(p.tiles_per_unit, g.k_h * g.k_w, mr);
    p.slots = Slots(threads);
    return p;
  }
  if (UseNarrow(g)) {
    p.narrow = true;
    return p;
  }
  p.pointwise = Pointwise(g);
  p.rows = BlockRows(g.out_pixels(), g.patch(), threads);
  p.blocks = CeilDiv(g.out_pixels(), p.rows);
  // Every running call holds a slot, empty ones too (pointwise needs no scratch).
  p.slots = Slots(threads);
  if (!p.pointwise) p.slot_floats = p.rows * g.patch();
  return p;
}

void ForwardIgemm(const Conv2DGeometry& g, const ForwardPlan& plan, const float* x, const float* w,
                  const float* bias, bool relu, float* y, float* workspace, const CpuContext& cpu) {
  float* packed = workspace;
  float* zeros = packed + plan.packed;
  ZeroFloats(zeros, plan.zeros);
  PackForward(g, w, packed, cpu);
  std::vector<int64_t> off_a(g.k_h), off_b(g.k_w);
  for (int64_t kh = 0; kh < g.k_h; ++kh) off_a[kh] = kh * g.dilation_h - g.pad_top;
  for (int64_t kw = 0; kw < g.k_w; ++kw) off_b[kw] = kw * g.dilation_w - g.pad_left;
  IgemmJob job{g.batch, g.out_h, g.out_w,
               y, g.out_h, g.out_w, g.out_c, 0, 1, 0, 1,
               x, g.in_h, g.in_w, g.in_c, g.stride_h, g.stride_w,
               off_a.data(), off_b.data(), g.k_h, g.k_w,
               g.groups, g.in_c_per_group, g.out_c_per_group,
               packed, bias, relu, zeros, plan.tiles_per_unit};
  RunIgemm({job}, zeros + plan.zeros, plan.slot_floats, plan.slots, cpu);
}

void ForwardGemm(const Conv2DGeometry& g, const ForwardPlan& plan, const float* x, const float* w,
                 const float* bias, bool relu, float* y, float* workspace, const CpuContext& cpu) {
  EnsureSingleThreadedBlas();
  const int64_t M = g.out_pixels(), O = g.out_c, C = g.in_c, G = g.groups;
  const int64_t cg = g.in_c_per_group, og = g.out_c_per_group, patch = g.patch(), rows = plan.rows;
  SlotPool pool(workspace, plan.slot_floats, plan.slots);
  const Loops& loops = L();
  cpu.parallel(plan.blocks, GemmCost(double(rows) * patch * og * G), [&](int64_t b0, int64_t b1) {
    Lease lease(&pool);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * rows, n = std::min(rows, M - p0);
      float* yb = y + p0 * O;
      for (int64_t grp = 0; grp < G; ++grp) {
        const float* a = x + p0 * C + grp * cg;
        int64_t lda = C;
        if (!plan.pointwise) {
          Im2Col(g, x, p0, n, grp, lease.data());
          a = lease.data();
          lda = patch;
        }
        blas::Sgemm(false, false, n, og, patch, 1.0f, a, lda, w + grp * og, O, 0.0f, yb + grp * og, O);
      }
      if (bias != nullptr || relu) loops.bias_activation(yb, n, O, O, bias, relu);
    }
  });
}

// Every output row (n, i) by `row_fn`, the rows spread over the pool.
void ForwardRows(const Conv2DGeometry& g, decltype(&isa_base::DepthwiseForwardRow) row_fn, const float* x,
                 const float* w, const float* bias, bool relu, float* y, const CpuContext& cpu) {
  const int64_t row = g.out_w * g.out_c;
  cpu.parallel(g.batch * g.out_h, row * g.k_h * g.k_w * g.in_c_per_group, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) row_fn(g, x, w, bias, relu, r / g.out_h, r % g.out_h, y + r * row);
  });
}

void ForwardDepthwise(const Conv2DGeometry& g, const float* x, const float* w, const float* bias, bool relu,
                      float* y, const CpuContext& cpu) {
  ForwardRows(g, L().dw_forward_row, x, w, bias, relu, y, cpu);
}

void RunForward(const Conv2DGeometry& g, const ForwardPlan& plan, const float* x, const float* w,
                const float* bias, bool relu, float* y, float* workspace, const CpuContext& cpu) {
  if (g.out_pixels() == 0) return;
  if (plan.depthwise) {
    ForwardDepthwise(g, x, w, bias, relu, y, cpu);
  } else if (plan.narrow) {
    ForwardRows(g, L().narrow_forward_row, x, w, bias, relu, y, cpu);
  } else if (plan.igemm) {
    ForwardIgemm(g, plan, x, w, bias, relu, y, workspace, cpu);
  } else {
    ForwardGemm(g, plan, x, w, bias, relu, y, workspace, cpu);
  }
}

// ---------------------------------------------------------------- input gradient
// One stride phase of the input gradient (indirect GEMM): the dx pixels
// (rh + sh*qh, rw + sw*qw) receive dy from exactly the taps kh with
// (rh + pt - kh*dh) = 0 mod sh (likewise kw), at dy row qh + (rh + pt - kh*dh) / sh.
struct InputPhase {
  int64_t rh, rw, grid_a, grid_b;
  std::vector<int64_t> kh, kw, off_a, off_b;
  int64_t packed_offset;
};

struct InputPlan {
  enum class Path { kEmpty, kDepthwise, kPointwise, kIgemm, kGather, kScatter } path = Path::kEmpty;
  Conv2DGeometry flipped{};  // kGather: the forward convolution computing dx
  ForwardPlan forward;       // kGather: its plan
  std::vector<InputPhase> phases;  // kIgemm
  int64_t packed = 0, zeros = 0, tiles_per_unit = 0;  // kIgemm
  int64_t rows = 0, blocks_per_image = 0, slot_floats = 0;
  int slots = 0;
  int64_t workspace = 0;
};

// The taps t < k whose source offset (r + pad - t*d) is a multiple of s, and their
// offsets (r + pad - t*d) / s.
void PhaseTaps(int64_t r, int64_t pad, int64_t k, int64_t d, int64_t s, std::vector<int64_t>* taps,
               std::vector<int64_t>* offsets) {
  for (int64_t t = 0; t < k; ++t) {
    const int64_t num = r + pad - t * d;
    if (((num % s) + s) % s == 0) {
      taps->push_back(t);
      offsets->push_back(num / s);
    }
  }
}

// dx as a forward convolution (stride 1): input dy [N, OH, OW, O], filter [KH, KW, Og, C]
// flipped, output [N, H, W, C]: dx[h] = sum_kh dy[h + pt - kh*dh] w[kh] = sum_kh'
// dy[h - ((KH-1)*dh - pt) + kh'*dh] w[KH-1-kh'].
Conv2DGeometry Flipped(const Conv2DGeometry& g) {
  Conv2DGeometry t = g;
  t.in_h = g.out_h;
  t.in_w = g.out_w;
  t.in_c = g.out_c;
  t.out_c = g.in_c;
  t.in_c_per_group = g.out_c_per_group;
  t.out_c_per_group = g.in_c_per_group;
  t.pad_top = (g.k_h - 1) * g.dilation_h - g.pad_top;
  t.pad_left = (g.k_w - 1) * g.dilation_w - g.pad_left;
  t.pad_bottom = (g.k_h - 1) * g.dilation_h - g.pad_bottom;
  t.pad_right = (g.k_w - 1) * g.dilation_w - g.pad_right;
  t.out_h = g.in_h;
  t.out_w = g.in_w;
  return t;
}

InputPlan PlanInput(const Conv2DGeometry& g, int threads) {
  InputPlan p;
  if (g.in_pixels() == 0) return p;
  const bool stride1 = g.stride_h == 1 && g.stride_w == 1;
  if (UseDepthwise(g)) {
    if (stride1 && g.out_c_per_group == 1) {
      // The flipped convolution is depthwise too, with the register-blocked loop.
      p.path = InputPlan::Path::kGather;
      p.flipped = Flipped(g);
      p.forward = PlanForward(p.flipped, threads);
      p.workspace = FilterFloats(g);
    } else {
      p.path = InputPlan::Path::kDepthwise;
    }
    return p;
  }
  // (A stride phase sums fewer taps; the full filter's count decides.)
  if (UseIgemm(g.in_c_per_group, g.k_h * g.k_w * g.out_c_per_group)) {
    p.path = InputPlan::Path::kIgemm;
    const int nr = L().igemm_nr, mr = L().igemm_mr;
    p.tiles_per_unit = TilesPerUnit(g.in_pixels(), mr, threads);
    for (int64_t rh = 0; rh < std::min(g.stride_h, g.in_h); ++rh) {
      for (int64_t rw = 0; rw < std::min(g.stride_w, g.in_w); ++rw) {
        InputPhase ph{rh, rw, CeilDiv(g.in_h - rh, g.stride_h), CeilDiv(g.in_w - rw, g.stride_w), {}, {}, {}, {},
                      p.packed};
        PhaseTaps(rh, g.pad_top, g.k_h, g.dilation_h, g.stride_h, &ph.kh, &ph.off_a);
        PhaseTaps(rw, g.pad_left, g.k_w, g.dilation_w, g.stride_w, &ph.kw, &ph.off_b);
        const int64_t taps = static_cast<int64_t>(ph.kh.size() * ph.kw.size());
        p.packed += IgemmPackedFloats(g.groups, taps, g.out_c_per_group, g.in_c_per_group, nr);
        p.slot_floats = std::max(p.slot_floats, IgemmSlotFloats(p.tiles_per_unit, taps, mr));
        p.phases.push_back(std::move(ph));
      }
    }
    p.zeros = ZerosFloats(g.out_c);
    p.slots = Slots(threads);
    p.workspace = p.packed + p.zeros + p.slot_floats * p.slots;
    return p;
  }
  if (Pointwise(g)) {
    p.path = InputPlan::Path::kPointwise;
    p.rows = BlockRows(g.in_pixels(), g.in_c_per_group, threads);
    return p;
  }
  // Gather reads patches of KH*KW*Og dy values per dx pixel, scatter writes KH*KW*Cg per
  // dy pixel; scatter parallelizes over images only.
  if (stride1 && (g.in_c_per_group >= g.out_c_per_group || g.batch < 2 * threads)) {
    p.path = InputPlan::Path::kGather;
    p.flipped = Flipped(g);
    p.forward = PlanForward(p.flipped, threads);
    p.workspace = FilterFloats(g) + p.forward.workspace();
    return p;
  }
  p.path = InputPlan::Path::kScatter;
  const int64_t image = g.out_h * g.out_w;
  p.rows = std::clamp<int64_t>(kColBlockFloats / g.patch(), kMinRows, kMaxRows);
  p.rows = std::min(p.rows, image);
  p.blocks_per_image = CeilDiv(image, p.rows);
  p.slot_floats = p.rows * g.patch();
  p.slots = Slots(threads);
  p.workspace = p.slot_floats * p.slots;
  return p;
}

// w'[kh', kw', o, g*Cg + c] = w[KH-1-kh', KW-1-kw', c, g*Og + o]: per tap and group, a
// [Cg, Og] -> [Og, Cg] transpose.
void FlipFilter(const Conv2DGeometry& g, const float* w, float* wf, const CpuContext& cpu) {
  const int64_t taps = g.k_h * g.k_w, cg = g.in_c_per_group, og = g.out_c_per_group, O = g.out_c, C = g.in_c;
  cpu.parallel(taps * g.groups, cg * og, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t t = u / g.groups, grp = u % g.groups;
      const int64_t src_tap = taps - 1 - t;  // (KH-1-kh)*KW + (KW-1-kw)
      const float* a = w + src_tap * cg * O + grp * og;
      float* b = wf + t * og * C + grp * cg;
      if (cg == 1 || og == 1) {
        for (int64_t k = 0; k < cg * og; ++k) b[k * (og == 1 ? 1 : C)] = a[k * (cg == 1 ? 1 : O)];
      } else if (!blas::Transpose(static_cast<int>(cg), static_cast<int>(og), a, static_cast<int>(O), b,
                           static_cast<int>(C))) {
        for (int64_t c = 0; c < cg; ++c) {
          for (int64_t o = 0; o < og; ++o) b[o * C + c] = a[c * O + o];
        }
      }
    }
  });
}

// ---------------------------------------------------------------- filter gradient
struct FilterPlan {
  bool depthwise = false, pointwise = false, igemm = false;
  int64_t rows = 0, blocks = 0, units = 0, slot_floats = 0, partial_floats = 0;
  int slots = 0;
  int64_t zeros = 0;  // igemm
  int64_t workspace() const { return zeros + slot_floats * slots + units * partial_floats; }
};

// Pixels per block of the filter gradient's indirect GEMM: dy's block rows stay in L1/L2
// while every (tap, channel tile, output block) runs over them.
constexpr int64_t kFilterBlockPixels = 256;

FilterPlan PlanFilter(const Conv2DGeometry& g, int threads, bool bias) {
  FilterPlan p;
  if (g.out_pixels() == 0) return p;
  p.partial_floats = FilterFloats(g) + (bias ? g.out_c : 0);
  const int64_t max_units = std::max<int64_t>(1, kMaxPartialFloats / p.partial_floats);
  if (UseDepthwise(g)) {
    p.depthwise = true;
    p.units = std::min({g.batch * g.out_h, kUnitsPerThread * threads, max_units});
    return p;
  }
  p.slots = Slots(threads);
  if (L().igemm_filter_units != nullptr && UseIgemm(g.out_c_per_group, g.patch())) {
    p.igemm = true;
    p.rows = std::min(kFilterBlockPixels, g.out_pixels());
    p.blocks = CeilDiv(g.out_pixels(), p.rows);
    p.units = std::min({p.blocks, kUnitsPerThread * threads, max_units});
    p.zeros = ZerosFloats(g.in_c);
    p.slot_floats = g.k_h * g.k_w * p.rows * static_cast<int64_t>(sizeof(void*) / sizeof(float));
    return p;
  }
  p.pointwise = Pointwise(g);
  p.rows = BlockRows(g.out_pixels(), g.patch(), threads);
  p.blocks = CeilDiv(g.out_pixels(), p.rows);
  p.units = std::min({p.blocks, kUnitsPerThread * threads, max_units});
  if (!p.pointwise) p.slot_floats = p.rows * g.patch();
  return p;
}

// out[i] = sum_u partials[u * stride + i], in unit order.
void SumPartials(const float* partials, int64_t stride, int64_t units, int64_t count, float* out,
                 const CpuContext& cpu) {
  constexpr int64_t kChunk = 4096;
  const Loops& loops = L();
  cpu.parallel(CeilDiv(count, kChunk), kChunk * units / 4, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kChunk, len = std::min(kChunk, count - begin);
      std::memcpy(out + begin, partials + begin, len * sizeof(float));
      for (int64_t u = 1; u < units; ++u) loops.add_into(out + begin, partials + u * stride + begin, len);
    }
  });
}

}  // namespace

// ===================================================================== entry points
int64_t Conv2DForwardCpuWorkspace(const Conv2DGeometry& g, int threads) {
  return PlanForward(g, threads).workspace();
}

int64_t Conv2DBackpropInputCpuWorkspace(const Conv2DGeometry& g, int threads) {
  return PlanInput(g, threads).workspace;
}

int64_t Conv2DBackpropFilterCpuWorkspace(const Conv2DGeometry& g, int threads, bool bias) {
  return PlanFilter(g, threads, bias).workspace();
}

void Conv2DForwardCpu(const Conv2DGeometry& g, const Conv2DForwardArgs& a, const CpuContext& cpu) {
  RunForward(g, PlanForward(g, cpu.threads), a.input, a.filter, a.bias, a.activation == Activation::kRelu,
             a.output, cpu.workspace, cpu);
}

void Conv2DBackpropInputCpu(const Conv2DGeometry& g, const Conv2DBackpropInputArgs& a, const CpuContext& cpu) {
  const InputPlan plan = PlanInput(g, cpu.threads);
  const int64_t O = g.out_c, C = g.in_c, G = g.groups, cg = g.in_c_per_group, og = g.out_c_per_group;
  switch (plan.path) {
    case InputPlan::Path::kEmpty:
      return;
    case InputPlan::Path::kDepthwise: {
      // Units: (image, channel block); channel blocks only when images are too few.
      const int64_t want = kBlocksPerThread * cpu.threads;
      int64_t cblocks = g.batch >= want ? 1 : std::min(CeilDiv(want, g.batch), CeilDiv(C, 8));
      const int64_t width = std::min(C, (CeilDiv(CeilDiv(C, cblocks), 8) * 8));
      cblocks = CeilDiv(C, width);
      const Loops& loops = L();
      cpu.parallel(g.batch * cblocks, g.out_pixels() / g.batch * width * g.k_h * g.k_w, [&](int64_t u0, int64_t u1) {
        for (int64_t u = u0; u < u1; ++u) {
          const int64_t n = u / cblocks, c0 = (u % cblocks) * width;
          loops.dw_backprop_input_slice(g, a.out_backprop, a.filter, n, c0, std::min(C, c0 + width), a.input_backprop);
        }
      });
      return;
    }
    case InputPlan::Path::kPointwise: {
      EnsureSingleThreadedBlas();
      const int64_t M = g.in_pixels(), rows = plan.rows;
      cpu.parallel(CeilDiv(M, rows), GemmCost(double(rows) * cg * og * G), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t p0 = b * rows, n = std::min(rows, M - p0);
          for (int64_t grp = 0; grp < G; ++grp) {
            blas::Sgemm(false, true, n, cg, og, 1.0f, a.out_backprop + p0 * O + grp * og, O, a.filter + grp * og, O,
                        0.0f, a.input_backprop + p0 * C + grp * cg, C);
          }
        }
      });
      return;
    }
    case InputPlan::Path::kIgemm: {
      // Per phase: packed[g][ob][(ta*|kw| + tb)*Og + o][j] = w[kh[ta], kw[tb], ob*NR + j, g*Og + o].
      const int64_t nr = L().igemm_nr, oblocks = CeilDiv(cg, nr);
      float* packed = cpu.workspace;
      float* zeros = packed + plan.packed;
      ZeroFloats(zeros, plan.zeros);
      std::vector<IgemmJob> jobs;
      for (const InputPhase& ph : plan.phases) {
        const int64_t ta_n = static_cast<int64_t>(ph.kh.size()), tb_n = static_cast<int64_t>(ph.kw.size());
        float* dst = packed + ph.packed_offset;
        const int64_t block = ta_n * tb_n * og * nr;
        cpu.parallel(G * oblocks, block, [&](int64_t u0, int64_t u1) {
          for (int64_t u = u0; u < u1; ++u) {
            const int64_t grp = u / oblocks, ob = u % oblocks, cols = std::min(nr, cg - ob * nr);
            float* d = dst + u * block;
            for (int64_t ta = 0; ta < ta_n; ++ta) {
              for (int64_t tb = 0; tb < tb_n; ++tb) {
                const float* src = a.filter + (ph.kh[ta] * g.k_w + ph.kw[tb]) * cg * O + grp * og;
                for (int64_t o = 0; o < og; ++o, d += nr) {
                  for (int64_t j = 0; j < cols; ++j) d[j] = src[(ob * nr + j) * O + o];
                  for (int64_t j = cols; j < nr; ++j) d[j] = 0.0f;
                }
              }
            }
          }
        });
        jobs.push_back(IgemmJob{g.batch, ph.grid_a, ph.grid_b,
                                a.input_backprop, g.in_h, g.in_w, C, ph.rh, g.stride_h, ph.rw, g.stride_w,
                                a.out_backprop, g.out_h, g.out_w, O, 1, 1,
                                ph.off_a.data(), ph.off_b.data(), ta_n, tb_n,
                                G, og, cg, dst, nullptr, false, zeros, plan.tiles_per_unit});
      }
      RunIgemm(jobs, zeros + plan.zeros, plan.slot_floats, plan.slots, cpu);
      return;
    }
    case InputPlan::Path::kGather: {
      float* wf = cpu.workspace;
      FlipFilter(g, a.filter, wf, cpu);
      RunForward(plan.flipped, plan.forward, a.out_backprop, wf, nullptr, false, a.input_backprop,
                 cpu.workspace + FilterFloats(g), cpu);
      return;
    }
    case InputPlan::Path::kScatter: {
      EnsureSingleThreadedBlas();
      const int64_t patch = g.patch(), rows = plan.rows, image = g.out_h * g.out_w;
      SlotPool pool(cpu.workspace, plan.slot_floats, plan.slots);
      const int64_t cost = GemmCost(double(image) * patch * og * G);
      cpu.parallel(g.batch, cost, [&](int64_t n0, int64_t n1) {
        Lease lease(&pool);
        float* col = lease.data();
        for (int64_t n = n0; n < n1; ++n) {
          ZeroFloats(a.input_backprop + n * g.in_h * g.in_w * C, g.in_h * g.in_w * C);
          for (int64_t b = 0; b < plan.blocks_per_image; ++b) {
            const int64_t p0 = n * image + b * rows, cnt = std::min(rows, image - b * rows);
            for (int64_t grp = 0; grp < G; ++grp) {
              blas::Sgemm(false, true, cnt, patch, og, 1.0f, a.out_backprop + p0 * O + grp * og, O,
                          a.filter + grp * og, O, 0.0f, col, patch);
              Col2ImAdd(g, col, p0, cnt, grp, a.input_backprop);
            }
          }
        }
      });
      return;
    }
  }
}

void Conv2DBackpropFilterCpu(const Conv2DGeometry& g, const Conv2DBackpropFilterArgs& a, const CpuContext& cpu) {
  const bool bias = a.bias_backprop != nullptr;
  const FilterPlan plan = PlanFilter(g, cpu.threads, bias);
  const int64_t O = g.out_c, filter = FilterFloats(g);
  if (g.out_pixels() == 0) {
    ZeroFloats(a.filter_backprop, filter);
    if (bias) ZeroFloats(a.bias_backprop, O);
    return;
  }
  // Partials of unit u at partials + u * stride: [filter | bias].
  float* partials = cpu.workspace + plan.zeros + plan.slot_floats * plan.slots;
  const int64_t stride = plan.partial_floats;
  const Loops& loops = L();
  if (plan.igemm) {
    float* zeros = cpu.workspace;
    ZeroFloats(zeros, plan.zeros);
    std::vector<int64_t> off_a(g.k_h), off_b(g.k_w);
    for (int64_t kh = 0; kh < g.k_h; ++kh) off_a[kh] = kh * g.dilation_h - g.pad_top;
    for (int64_t kw = 0; kw < g.k_w; ++kw) off_b[kw] = kw * g.dilation_w - g.pad_left;
    const IgemmFilterJob job{g.batch, g.out_h, g.out_w,
                             a.input, g.in_h, g.in_w, g.in_c, g.stride_h, g.stride_w,
                             off_a.data(), off_b.data(), g.k_h, g.k_w,
                             a.out_backprop, g.groups, g.in_c_per_group, g.out_c_per_group,
                             zeros, plan.rows, plan.blocks, plan.units, partials, stride, bias};
    SlotPool pool(zeros + plan.zeros, plan.slot_floats, plan.slots);
    const auto run = loops.igemm_filter_units;
    const int64_t cost = GemmCost(double(plan.blocks) / plan.units * plan.rows * g.patch() * g.out_c);
    cpu.parallel(plan.units, cost, [&](int64_t u0, int64_t u1) {
      Lease lease(&pool);
      run(job, u0, u1, lease.data());
    });
  } else if (plan.depthwise) {
    const int64_t rows = g.batch * g.out_h, units = plan.units;
    cpu.parallel(units, rows / units * g.out_w * O * g.k_h * g.k_w, [&](int64_t u0, int64_t u1) {
      for (int64_t u = u0; u < u1; ++u) {
        float* dw = partials + u * stride;
        ZeroFloats(dw, stride);
        loops.dw_backprop_filter_rows(g, a.input, a.out_backprop, u * rows / units, (u + 1) * rows / units, dw,
                                      bias ? dw + filter : nullptr);
      }
    });
  } else {
    EnsureSingleThreadedBlas();
    const int64_t M = g.out_pixels(), C = g.in_c, G = g.groups, cg = g.in_c_per_group, og = g.out_c_per_group;
    const int64_t patch = g.patch(), rows = plan.rows, units = plan.units, blocks = plan.blocks;
    SlotPool pool(cpu.workspace, plan.slot_floats, plan.slots);
    const int64_t cost = GemmCost(double(blocks) / units * rows * patch * og * G);
    cpu.parallel(units, cost, [&](int64_t u0, int64_t u1) {
      Lease lease(&pool);
      for (int64_t u = u0; u < u1; ++u) {
        float* dw = partials + u * stride;
        float* db = bias ? dw + filter : nullptr;
        if (db != nullptr) ZeroFloats(db, O);
        const int64_t first = u * blocks / units, last = (u + 1) * blocks / units;
        for (int64_t b = first; b < last; ++b) {
          const int64_t p0 = b * rows, n = std::min(rows, M - p0);
          const float* dyb = a.out_backprop + p0 * O;
          for (int64_t grp = 0; grp < G; ++grp) {
            const float* col = a.input + p0 * C + grp * cg;
            int64_t ldcol = C;
            if (!plan.pointwise) {
              Im2Col(g, a.input, p0, n, grp, lease.data());
              col = lease.data();
              ldcol = patch;
            }
            blas::Sgemm(true, false, patch, og, n, 1.0f, col, ldcol, dyb + grp * og, O, b == first ? 0.0f : 1.0f,
                        dw + grp * og, O);
          }
          if (db != nullptr) loops.sum_rows(dyb, n, O, O, db);
        }
      }
    });
  }
  SumPartials(partials, stride, plan.units, filter, a.filter_backprop, cpu);
  if (bias) SumPartials(partials + filter, stride, plan.units, O, a.bias_backprop, cpu);
}

// ============================================================ float16 (conv.h)
namespace {

// The half loops of one build: AVX2+F16C where the processor has them (and
// TFMPS_CONV_ISA is not "base"), else portable. Both round exactly: the same bits.
struct HalfLoops {
  decltype(&isa_base::HalfToFloatRange) to_float;
  decltype(&isa_base::FloatToHalfRange) to_half;
  decltype(&isa_base::RoundToHalfRange) round;
  decltype(&isa_base::HalfGatherUnits) gather;
  decltype(&isa_base::HalfFilterRows) filter_rows;
  decltype(&isa_base::HalfBiasBlocks) bias_blocks;
};

const HalfLoops& H() {
  static const HalfLoops loops = [] {
#if defined(TFMPS_CONV_HAVE_X86_BUILDS)
    const char* env = std::getenv("TFMPS_CONV_ISA");
    const std::string want = env != nullptr ? env : "";
    const bool f16c = want != "base" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                      __builtin_cpu_supports("fma");
    if (f16c) {
      return HalfLoops{isa_f16c::HalfToFloatRange, isa_f16c::FloatToHalfRange, isa_f16c::RoundToHalfRange,
                       isa_f16c::HalfGatherUnits,  isa_f16c::HalfFilterRows,   isa_f16c::HalfBiasBlocks};
    }
#endif
    return HalfLoops{isa_base::HalfToFloatRange, isa_base::FloatToHalfRange, isa_base::RoundToHalfRange,
                     isa_base::HalfGatherUnits,  isa_base::HalfFilterRows,   isa_base::HalfBiasBlocks};
  }();
  return loops;
}

// Cycles of one half-accumulation step per lane block (ParallelFor's split).
constexpr int64_t kHalfStepCycles = 12;
constexpr int64_t kConvertChunk = 16384;

int64_t HalfBlocks(int64_t channels) { return CeilDiv(channels, kHalfLanes); }

// Lanes per block of a gather over `cout` destination channels per group: wide blocks
// (more independent accumulators) where they are mostly filled.
int64_t HalfGatherLanes(int64_t cout) { return cout >= 48 ? kHalfWideLanes : kHalfLanes; }

// Floats of the packed filter of a gather job: [G][blocks(cout)][taps][cin][lanes].
int64_t HalfPackedFloats(int64_t groups, int64_t taps, int64_t cin, int64_t cout) {
  const int64_t lanes = HalfGatherLanes(cout);
  return groups * CeilDiv(cout, lanes) * taps * cin * lanes;
}

// packed[g][blk][tap][k][l] = w[tap][c][o] with (c, o) = (k, g*Og + blk*L + l) (forward:
// lanes over output channels) or (blk*L + l, g*Og + k) (input gradient: lanes over input
// channels); 0 past the group's channels.
void PackHalfGather(const Conv2DGeometry& g, const float* w, bool transposed, float* packed, const CpuContext& cpu) {
  const int64_t taps = g.k_h * g.k_w, cg = g.in_c_per_group, og = g.out_c_per_group, O = g.out_c;
  const int64_t cin = transposed ? og : cg, cout = transposed ? cg : og, lanes = HalfGatherLanes(cout);
  const int64_t blocks = CeilDiv(cout, lanes), unit = taps * cin * lanes;
  cpu.parallel(g.groups * blocks, unit, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t grp = u / blocks, blk = u % blocks;
      float* d = packed + u * unit;
      for (int64_t t = 0; t < taps; ++t) {
        for (int64_t k = 0; k < cin; ++k, d += lanes) {
          for (int64_t l = 0; l < lanes; ++l) {
            const int64_t lane = blk * lanes + l;
            if (lane >= cout) {
              d[l] = 0.0f;
            } else if (transposed) {
              d[l] = w[(t * cg + lane) * O + grp * og + k];
            } else {
              d[l] = w[(t * cg + k) * O + grp * og + lane];
            }
          }
        }
      }
    }
  });
}

void RunHalfGather(const HalfGatherJob& job, const CpuContext& cpu) {
  const int64_t pixels = job.batch * job.dst_h * job.dst_w;
  const int64_t cost = job.k_a * job.k_b * job.cin * HalfBlocks(job.cout) * job.groups * kHalfStepCycles + 1;
  const auto run = H().gather;
  cpu.parallel(pixels, cost, [&](int64_t p0, int64_t p1) { run(job, p0, p1); });
}

}  // namespace

int64_t Conv2DForwardHalfAccCpuWorkspace(const Conv2DGeometry& g, int /*threads*/) {
  return g.out_pixels() == 0 ? 0 : HalfPackedFloats(g.groups, g.k_h * g.k_w, g.in_c_per_group, g.out_c_per_group);
}

int64_t Conv2DBackpropInputHalfAccCpuWorkspace(const Conv2DGeometry& g, int /*threads*/) {
  return g.in_pixels() == 0 ? 0 : HalfPackedFloats(g.groups, g.k_h * g.k_w, g.out_c_per_group, g.in_c_per_group);
}

int64_t Conv2DBackpropFilterHalfAccCpuWorkspace(const Conv2DGeometry& /*g*/, int /*threads*/, bool /*bias*/) {
  return 0;
}

void Conv2DForwardHalfAccCpu(const Conv2DGeometry& g, const Conv2DForwardArgs& a, const CpuContext& cpu) {
  if (g.out_pixels() == 0) return;
  PackHalfGather(g, a.filter, false, cpu.workspace, cpu);
  const HalfGatherJob job{false,     HalfGatherLanes(g.out_c_per_group), g.batch,     g.out_h,      g.out_w,      g.out_c,      a.output,
                          a.input,   g.in_h,      g.in_w,       g.in_c,       g.k_h,        g.k_w,
                          g.stride_h, g.stride_w, g.dilation_h, g.dilation_w, g.pad_top,    g.pad_left,
                          g.groups,  g.in_c_per_group, g.out_c_per_group, cpu.workspace, a.bias,
                          a.activation == Activation::kRelu};
  RunHalfGather(job, cpu);
}

void Conv2DBackpropInputHalfAccCpu(const Conv2DGeometry& g, const Conv2DBackpropInputArgs& a, const CpuContext& cpu) {
  if (g.in_pixels() == 0) return;
  if (g.out_pixels() == 0) {  // nothing reaches dx
    ZeroFloats(a.input_backprop, g.in_pixels() * g.in_c);
    return;
  }
  PackHalfGather(g, a.filter, true, cpu.workspace, cpu);
  const HalfGatherJob job{true,           HalfGatherLanes(g.in_c_per_group), g.batch,      g.in_h,       g.in_w,       g.in_c,    a.input_backprop,
                          a.out_backprop, g.out_h,      g.out_w,      g.out_c,      g.k_h,     g.k_w,
                          g.stride_h,     g.stride_w,   g.dilation_h, g.dilation_w, g.pad_top, g.pad_left,
                          g.groups,       g.out_c_per_group, g.in_c_per_group, cpu.workspace, nullptr, false};
  RunHalfGather(job, cpu);
}

void Conv2DBackpropFilterHalfAccCpu(const Conv2DGeometry& g, const Conv2DBackpropFilterArgs& a,
                                    const CpuContext& cpu) {
  const int64_t rows = g.k_h * g.k_w * g.in_c_per_group, O = g.out_c;
  const int64_t steps = std::max<int64_t>(g.out_pixels(), 1);
  const auto filter_rows = H().filter_rows;
  cpu.parallel(rows, GemmCost(0) + steps * g.groups * HalfBlocks(g.out_c_per_group) * kHalfStepCycles,
               [&](int64_t u0, int64_t u1) {
                 if (g.out_pixels() == 0) {
                   ZeroFloats(a.filter_backprop + u0 * O, (u1 - u0) * O);
                 } else {
                   filter_rows(g, a.input, a.out_backprop, u0, u1, a.filter_backprop);
                 }
               });
  if (a.bias_backprop != nullptr) {
    const auto bias_blocks = H().bias_blocks;
    cpu.parallel(HalfBlocks(O), steps * kHalfStepCycles, [&](int64_t b0, int64_t b1) {
      bias_blocks(a.out_backprop, g.out_pixels(), O, b0, b1, a.bias_backprop);
    });
  }
}

void HalfToFloatCpu(const uint16_t* in, float* out, int64_t n, const CpuContext& cpu) {
  const auto f = H().to_float;
  cpu.parallel(CeilDiv(n, kConvertChunk), kConvertChunk, [&](int64_t c0, int64_t c1) {
    f(in + c0 * kConvertChunk, out + c0 * kConvertChunk, std::min(n, c1 * kConvertChunk) - c0 * kConvertChunk);
  });
}

void FloatToHalfCpu(const float* in, uint16_t* out, int64_t n, const CpuContext& cpu) {
  const auto f = H().to_half;
  cpu.parallel(CeilDiv(n, kConvertChunk), kConvertChunk, [&](int64_t c0, int64_t c1) {
    f(in + c0 * kConvertChunk, out + c0 * kConvertChunk, std::min(n, c1 * kConvertChunk) - c0 * kConvertChunk);
  });
}

void RoundToHalfCpu(const float* in, float* out, int64_t n, const CpuContext& cpu) {
  const auto f = H().round;
  cpu.parallel(CeilDiv(n, kConvertChunk), kConvertChunk, [&](int64_t c0, int64_t c1) {
    f(in + c0 * kConvertChunk, out + c0 * kConvertChunk, std::min(n, c1 * kConvertChunk) - c0 * kConvertChunk);
  });
}

void BiasActivationCpu(float* y, int64_t rows, int64_t cols, const float* bias, Activation activation,
                       const CpuContext& cpu) {
  if (bias == nullptr && activation == Activation::kNone) return;
  const Loops& loops = L();
  const int64_t per = std::max<int64_t>(1, kConvertChunk / std::max<int64_t>(cols, 1));
  cpu.parallel(CeilDiv(rows, per), per * cols, [&](int64_t b0, int64_t b1) {
    const int64_t r0 = b0 * per, r1 = std::min(rows, b1 * per);
    loops.bias_activation(y + r0 * cols, r1 - r0, cols, cols, bias, activation == Activation::kRelu);
  });
}

const char* ConvCpuIsa() { return L().name; }

}  // namespace conv
}  // namespace tfmps
