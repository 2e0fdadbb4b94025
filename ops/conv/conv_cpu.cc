// CPU backend of the conv family (conv.h): GEMM on single-threaded BLAS, parallelized
// over TF's pool by this file, and direct loops for depthwise convolutions.
//
// Forward: the output pixels are cut into blocks of `rows` pixels (across images); a
//   block's patches are gathered (im2col) into its thread's scratch, [rows, KH*KW*Cg],
//   and one sgemm per group multiplies them by the filter, which in HWIO already is the
//   [KH*KW*Cg, O] matrix: y[block, group] = col x w[:, group] straight into the output
//   (ldc = O), then bias and activation while the block is in cache. A 1x1, stride-1,
//   unpadded convolution is the sgemm of the input rows themselves (no im2col).
// Filter gradient: dw = sum over blocks of col^T x dy, accumulated per work unit (a
//   fixed range of blocks: the result does not depend on which thread ran what) into
//   its own [KH*KW*Cg, O] partial, then summed in unit order; the bias gradient rides
//   along (sum of the dy rows of each block).
// Input gradient, whichever moves less data:
//   gather (stride 1): dx is the forward convolution of dy with the filter flipped in
//     space and transposed in channels ([KH, KW, Og, C]), padded by (KH-1)*dh - pt;
//     blocks of dx pixels in parallel, nothing to zero or add;
//   scatter (any stride, or few output channels per input channel): per image,
//     dcol = dy x w^T ([rows, KH*KW*Cg]) and col2im adds each patch row back into dx.
// Depthwise (Cg == 1): conv_cpu_loops.inc, vectorized over channels, no GEMM.
//
// BLAS runs on one thread: OpenBLAS's own pool spins and competes with TF's threads for
// the same cores, and one single-threaded sgemm per block already reaches BLAS's
// single-core rate (measured in docs/conv.md).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>

#include "ops/common/blas.h"
#include "ops/conv/conv.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TFMPS_CONV_HAVE_AVX2_BUILD 1
#endif

namespace tfmps {
namespace conv {

namespace isa_base {
#include "ops/conv/conv_cpu_loops.inc"  // NOLINT(build/include)
}  // namespace isa_base

#if defined(TFMPS_CONV_HAVE_AVX2_BUILD)
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
}  // namespace isa_avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace {

// The loops of one build (conv_cpu_loops.inc).
struct Loops {
  decltype(&isa_base::BiasActivation) bias_activation;
  decltype(&isa_base::AddInto) add_into;
  decltype(&isa_base::SumRows) sum_rows;
  decltype(&isa_base::DepthwiseForwardRow) dw_forward_row;
  decltype(&isa_base::DepthwiseBackpropInputSlice) dw_backprop_input_slice;
  decltype(&isa_base::DepthwiseBackpropFilterRows) dw_backprop_filter_rows;
};

#define TFMPS_CONV_LOOPS(ns)                                                                               \
  Loops {                                                                                                  \
    ns::BiasActivation, ns::AddInto, ns::SumRows, ns::DepthwiseForwardRow, ns::DepthwiseBackpropInputSlice, \
        ns::DepthwiseBackpropFilterRows                                                                    \
  }

bool UseAvx2Build() {
#if defined(TFMPS_CONV_HAVE_AVX2_BUILD)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2;
#else
  return false;
#endif
}

const Loops& L() {
#if defined(TFMPS_CONV_HAVE_AVX2_BUILD)
  static const Loops avx2 = TFMPS_CONV_LOOPS(isa_avx2);
  if (UseAvx2Build()) return avx2;
#endif
  static const Loops base = TFMPS_CONV_LOOPS(isa_base);
  return base;
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

// ------------------------------------------------------------------------ forward
struct ForwardPlan {
  bool depthwise = false, pointwise = false;
  int64_t rows = 0, blocks = 0, slot_floats = 0;
  int slots = 0;
  int64_t workspace() const { return slot_floats * slots; }
};

// Depthwise when each group has one input channel and the loops beat GEMM: always for
// G > 1 (the GEMM would have k = KH*KW), and for C == 1 when the channel multiplier is
// short enough that the output row loop stays in registers and L1.
bool UseDepthwise(const Conv2DGeometry& g) {
  return g.depthwise() && g.groups > 1;
}

ForwardPlan PlanForward(const Conv2DGeometry& g, int threads) {
  ForwardPlan p;
  if (g.out_pixels() == 0) return p;
  if (UseDepthwise(g)) {
    p.depthwise = true;
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

void ForwardDepthwise(const Conv2DGeometry& g, const float* x, const float* w, const float* bias, bool relu,
                      float* y, const CpuContext& cpu) {
  const Loops& loops = L();
  const int64_t row = g.out_w * g.out_c;
  cpu.parallel(g.batch * g.out_h, row * g.k_h * g.k_w, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      loops.dw_forward_row(g, x, w, bias, relu, r / g.out_h, r % g.out_h, y + r * row);
    }
  });
}

void RunForward(const Conv2DGeometry& g, const ForwardPlan& plan, const float* x, const float* w,
                const float* bias, bool relu, float* y, float* workspace, const CpuContext& cpu) {
  if (g.out_pixels() == 0) return;
  if (plan.depthwise) {
    ForwardDepthwise(g, x, w, bias, relu, y, cpu);
  } else {
    ForwardGemm(g, plan, x, w, bias, relu, y, workspace, cpu);
  }
}

// ---------------------------------------------------------------- input gradient
struct InputPlan {
  enum class Path { kEmpty, kDepthwise, kPointwise, kGather, kScatter } path = Path::kEmpty;
  Conv2DGeometry flipped{};  // kGather: the forward convolution computing dx
  ForwardPlan forward;       // kGather: its plan
  int64_t rows = 0, blocks_per_image = 0, slot_floats = 0;
  int slots = 0;
  int64_t workspace = 0;
};

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
  bool depthwise = false, pointwise = false;
  int64_t rows = 0, blocks = 0, units = 0, slot_floats = 0, partial_floats = 0;
  int slots = 0;
  int64_t workspace() const { return slot_floats * slots + units * partial_floats; }
};

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
  p.pointwise = Pointwise(g);
  p.rows = BlockRows(g.out_pixels(), g.patch(), threads);
  p.blocks = CeilDiv(g.out_pixels(), p.rows);
  p.units = std::min({p.blocks, kUnitsPerThread * threads, max_units});
  p.slots = Slots(threads);
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
  float* partials = cpu.workspace + plan.slot_floats * plan.slots;
  const int64_t stride = plan.partial_floats;
  const Loops& loops = L();
  if (plan.depthwise) {
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

const char* ConvCpuIsa() { return UseAvx2Build() ? "avx2+fma" : "base"; }

}  // namespace conv
}  // namespace tfmps
