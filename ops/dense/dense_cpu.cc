// CPU backend of the dense family (dense.h).
//
// Every op is one or two matrix products C[R, S'] = op(A) op(B) plus an epilogue:
//   forward        A = x [N, K],   B = W [K, M]           epilogue: + bias, round, relu
//   input grad     A = g [N, M],   B = W^T                 (g = dy masked by relu)
//   kernel grad    A = x^T,        B = g [N, M]            and db = column sums of g
// float32 accumulation: single-threaded BLAS sgemm on blocks of the output (rows, or
// columns when there are few rows) spread over TF's pool, the epilogue on each block
// while it is in cache. OpenBLAS's own threads would spin against TF's for the same
// cores (conv_cpu.cc measured it), so BLAS runs on one thread per call. Half data is
// converted to float32 first (exact) and the result rounded once.
// float16 accumulation: the model of dense.h, as a loop over a tile of output columns
// (doubles, vectorized) for each term in order, tiles of 4 rows x 512 columns over the
// pool (each B row is loaded once per 4 output rows).
//
// Results do not depend on the thread count's scheduling: every output element is
// computed by one call in one fixed order.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>

#include "ops/common/blas.h"
#include "ops/dense/dense.h"

// The half-accumulation and conversion loops, cloned for AVX-512 / AVX2 on x86 Linux
// (GCC's ifunc dispatch, chosen once at load); a portable build everywhere else.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define TFMPS_DENSE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TFMPS_DENSE_CLONES
#endif

namespace tfmps {
namespace dense {
namespace {

// ---------------------------------------------------------------- half <-> float
// Branch-free so that loops over them vectorize, and without float subnormals (TF runs
// kernels with flush-to-zero and denormals-are-zero on): every intermediate is normal.
inline uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float Float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint64_t Bits(double f) {
  uint64_t u;
  std::memcpy(&u, &f, 8);
  return u;
}
inline double Double(uint64_t u) {
  double f;
  std::memcpy(&f, &u, 8);
  return f;
}

// Select without a branch: GCC if-converts (and vectorizes) this where it does not a ?:
// between two computed values.
inline uint32_t Sel(bool c, uint32_t a, uint32_t b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return (a & m) | (b & ~m);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  // normal: rebias the exponent (15 -> 127); inf/NaN: all-ones exponent
  uint32_t normal = (em << 13) + ((127u - 15u) << 23);
  normal += Sel(em >= 0x7c00u, (128u - 16u) << 23, 0);
  // subnormal: m * 2^-24 = (2^-14 + m * 2^-24) - 2^-14, all normal floats
  const uint32_t sub = Bits(Float((em << 13) + (113u << 23)) - Float(113u << 23));
  return Float(Sel(em < 0x0400u, sub, normal) | sign);
}

// Round to nearest even, overflow to inf, NaN stays (quiet) NaN.
inline uint16_t FloatToHalf(float f) {
  uint32_t u = Bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  const uint32_t big = Sel(u > 0x7f800000u, 0x7e00u, 0x7c00u);  // NaN, or inf / >= 2^16
  // below 2^-14: add 0.5 so that the hardware rounds at 2^-24, then take the low bits
  const uint32_t sub = Bits(Float(u) + 0.5f) - Bits(0.5f);
  // normal: rebias and round the 13 dropped bits to nearest even
  const uint32_t normal = (u + ((15u - 127u) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
  return static_cast<uint16_t>(Sel(u >= 0x47800000u, big, Sel(u < 0x38800000u, sub, normal)) | sign);
}

// The model's round_to_half on a double: s rounded to a multiple of the half quantum
// q = 2^(e-10) (e = s's exponent clamped to [-14, 15]: 2^-24 below the normal range) by
// adding and subtracting 1.5 * 2^52 * q (the hardware rounds to nearest even at q);
// beyond the largest half (rounding reaches 2^16) inf; the sign kept (also of zero).
inline double HalfRound(double s) {
  const double a = std::fabs(s);
  double t = a < 0x1p-14 ? 0x1p-14 : a;
  t = t > 0x1p15 ? 0x1p15 : t;
  const double c = Double(((Bits(t) & 0x7ff0000000000000ull) + (42ull << 52)) | (1ull << 51));
  double r = std::fabs((s + c) - c);
  r = r >= 65536.0 ? std::numeric_limits<double>::infinity() : r;
  return std::copysign(r, s);
}

// relu of dense.h: kept if > 0 or NaN, else +0.
inline float Relu(float v) { return Float(Sel(v > 0.0f || v != v, Bits(v), 0)); }
inline uint16_t ReluHalf(uint16_t h) {
  const uint32_t mag = h & 0x7fffu;
  return static_cast<uint16_t>(Sel(((h & 0x8000u) == 0 || mag > 0x7c00u) && mag != 0, h, 0));  // positive or NaN
}
// relu's mask: y > 0.
inline bool PositiveHalf(uint16_t h) { return (h & 0x8000u) == 0 && h != 0 && h <= 0x7c00u; }

// --------------------------------------------------------------------- loops
// dst[i] = float value of src[i] (rows of `cols` elements, strides given), optionally
// masked by relu (mask[i] > 0 keeps) and/or rounded to half; float or half sources.
struct Operand {
  const void* src;
  DType type;
  const void* mask;  // the forward output (same type and layout as src) when masked
  bool round_to_half;
  bool masked;  // (not `mask != nullptr`: workspace sizing runs without pointers)
};

TFMPS_DENSE_CLONES
void ConvertRows(const Operand& op, int64_t cols, int64_t r0, int64_t r1, float* __restrict dst) {
  for (int64_t r = r0; r < r1; ++r) {
    float* __restrict d = dst + r * cols;
    if (op.type == DType::kFloat16) {
      const uint16_t* __restrict s = static_cast<const uint16_t*>(op.src) + r * cols;
      if (op.masked) {
        const uint16_t* __restrict m = static_cast<const uint16_t*>(op.mask) + r * cols;
        for (int64_t c = 0; c < cols; ++c) d[c] = Float(Sel(PositiveHalf(m[c]), Bits(HalfToFloat(s[c])), 0));
      } else {
        for (int64_t c = 0; c < cols; ++c) d[c] = HalfToFloat(s[c]);
      }
    } else {
      const float* __restrict s = static_cast<const float*>(op.src) + r * cols;
      if (op.masked) {
        const float* __restrict m = static_cast<const float*>(op.mask) + r * cols;
        for (int64_t c = 0; c < cols; ++c) d[c] = Float(Sel(m[c] > 0.0f, Bits(s[c]), 0));
      } else {
        for (int64_t c = 0; c < cols; ++c) d[c] = s[c];
      }
      if (op.round_to_half) {
        for (int64_t c = 0; c < cols; ++c) d[c] = HalfToFloat(FloatToHalf(d[c]));
      }
    }
  }
}

// The output epilogue of one block: v = z + bias (float32), rounded to the output type,
// then the activation.
struct Epilogue {
  const float* bias;  // [C] or nullptr
  Activation activation;
  DType type;
  void* out;
  int64_t ldo;
};

TFMPS_DENSE_CLONES
void StoreRows(const Epilogue& e, const float* z, int64_t ldz, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  const bool relu = e.activation == Activation::kRelu;
  for (int64_t r = r0; r < r1; ++r) {
    const float* zr = z + (r - r0) * ldz;  // may be the output itself (no __restrict)
    const int64_t n = c1 - c0;
    if (e.type == DType::kFloat32) {
      float* o = static_cast<float*>(e.out) + r * e.ldo + c0;
      if (e.bias != nullptr) {
        const float* __restrict b = e.bias + c0;
        if (relu) {
          for (int64_t c = 0; c < n; ++c) o[c] = Relu(zr[c] + b[c]);
        } else {
          for (int64_t c = 0; c < n; ++c) o[c] = zr[c] + b[c];
        }
      } else if (relu) {
        for (int64_t c = 0; c < n; ++c) o[c] = Relu(zr[c]);
      } else if (o != zr) {
        for (int64_t c = 0; c < n; ++c) o[c] = zr[c];
      }
    } else {
      uint16_t* __restrict o = static_cast<uint16_t*>(e.out) + r * e.ldo + c0;
      if (e.bias != nullptr) {
        const float* __restrict b = e.bias + c0;
        for (int64_t c = 0; c < n; ++c) o[c] = FloatToHalf(zr[c] + b[c]);
      } else {
        for (int64_t c = 0; c < n; ++c) o[c] = FloatToHalf(zr[c]);
      }
      if (relu) {
        for (int64_t c = 0; c < n; ++c) o[c] = ReluHalf(o[c]);
      }
    }
  }
}

// The half-accumulation model over a tile: acc[r][c] for rows [r0, r1) (at most kTileRows)
// and columns [c0, c1) (at most kTileCols) of a [R, S] x b [S, C] (row-major floats
// holding half values), then the epilogue. `z` is scratch of kTileRows * kTileCols floats.
constexpr int64_t kTileRows = 4;
constexpr int64_t kTileCols = 512;

TFMPS_DENSE_CLONES
void HalfAccTile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t S, int64_t r0, int64_t r1,
                 int64_t c0, int64_t c1, double* __restrict acc, float* __restrict z) {
  const int64_t rows = r1 - r0, n = c1 - c0;
  for (int64_t i = 0; i < rows * kTileCols; ++i) acc[i] = 0.0;
  for (int64_t s = 0; s < S; ++s) {
    const float* __restrict bs = b + s * ldb + c0;
    for (int64_t r = 0; r < rows; ++r) {
      const double av = a[(r0 + r) * lda + s];
      double* __restrict ar = acc + r * kTileCols;
      // The product of two halves is exact in double (and in float); the sum is rounded
      // once, to double, which the model allows (dense.h), then to half.
      for (int64_t c = 0; c < n; ++c) ar[c] = HalfRound(ar[c] + av * static_cast<double>(bs[c]));
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < n; ++c) z[r * kTileCols + c] = static_cast<float>(acc[r * kTileCols + c]);
  }
}

// ------------------------------------------------------------------ scheduling
constexpr int64_t kFlopsPerCycle = 16;  // sgemm, roughly: ParallelFor's cost estimate
constexpr int64_t kHalfStepCycles = 3;  // one model step per output, vectorized

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

void EnsureSingleThreadedBlas() {
  if (blas::NumThreads() != 1) blas::SetNumThreads(1);
}

void ParallelRows(const CpuContext& cpu, int64_t rows, int64_t cost_per_row,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (rows <= 0) return;
  cpu.parallel(rows, std::max<int64_t>(cost_per_row, 1), fn);
}

// One product C = op(A) op(B) + epilogue, float32 accumulation (sgemm), over blocks.
struct Gemm {
  int64_t R, C, S;
  const float* a;
  int64_t lda;
  bool ta;
  const float* b;
  int64_t ldb;
  bool tb;
  float* z;  // float result [R, C] (ldz = C): the output itself when float32, else scratch
  Epilogue epilogue;
};

void RunGemm(const Gemm& g, const CpuContext& cpu) {
  if (g.R == 0 || g.C == 0) return;
  EnsureSingleThreadedBlas();
  // One block per thread: rows when there are enough (16 or more each), else columns
  // too. Each sgemm call packs its own panels of B, so more blocks cost more packing:
  // on the 2-core box N512 1024->1024 ran at 90-120 GFLOP/s in 2 row blocks, 80-85 in 4
  // and 76-80 in 8 (single-threaded OpenBLAS per block, both cores shared with others).
  const int64_t threads = std::max(1, cpu.threads);
  int64_t row_blocks = std::min(CeilDiv(g.R, 16), threads);
  int64_t col_blocks = 1;
  if (row_blocks < threads) col_blocks = std::min(CeilDiv(g.C, 64), CeilDiv(threads, row_blocks));
  row_blocks = std::max<int64_t>(row_blocks, 1);
  const int64_t rb = CeilDiv(g.R, row_blocks), cb = CeilDiv(g.C, col_blocks);
  row_blocks = CeilDiv(g.R, rb);
  col_blocks = CeilDiv(g.C, cb);
  const double madds = static_cast<double>(rb) * cb * std::max<int64_t>(g.S, 1);
  const int64_t cost = static_cast<int64_t>(std::min(2.0 * madds / kFlopsPerCycle, 1e9)) + 1;
  cpu.parallel(row_blocks * col_blocks, cost, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t r0 = (u / col_blocks) * rb, r1 = std::min(g.R, r0 + rb);
      const int64_t c0 = (u % col_blocks) * cb, c1 = std::min(g.C, c0 + cb);
      float* z = g.z + r0 * g.C + c0;
      if (g.S == 0) {
        for (int64_t r = r0; r < r1; ++r) std::fill(z + (r - r0) * g.C, z + (r - r0) * g.C + (c1 - c0), 0.0f);
      } else {
        const float* a = g.ta ? g.a + r0 : g.a + r0 * g.lda;
        const float* b = g.tb ? g.b + c0 * g.ldb : g.b + c0;
        blas::Sgemm(g.ta, g.tb, static_cast<int>(r1 - r0), static_cast<int>(c1 - c0), static_cast<int>(g.S), 1.0f,
                    a, static_cast<int>(g.lda), b, static_cast<int>(g.ldb), 0.0f, z, static_cast<int>(g.C));
      }
      StoreRows(g.epilogue, z, g.C, r0, r1, c0, c1);
    }
  });
}

// The same product in the half-accumulation model: a [R, S], b [S, C] row-major.
void RunHalfAcc(int64_t R, int64_t C, int64_t S, const float* a, const float* b, const Epilogue& e,
                const CpuContext& cpu) {
  if (R == 0 || C == 0) return;
  const int64_t row_tiles = CeilDiv(R, kTileRows), col_tiles = CeilDiv(C, kTileCols);
  const int64_t cost = kHalfStepCycles * kTileRows * std::min(C, kTileCols) * std::max<int64_t>(S, 1) / 4 + 1;
  cpu.parallel(row_tiles * col_tiles, cost, [&](int64_t u0, int64_t u1) {
    double acc[kTileRows * kTileCols];
    float z[kTileRows * kTileCols];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t r0 = (u / col_tiles) * kTileRows, r1 = std::min(R, r0 + kTileRows);
      const int64_t c0 = (u % col_tiles) * kTileCols, c1 = std::min(C, c0 + kTileCols);
      HalfAccTile(a, S, b, C, S, r0, r1, c0, c1, acc, z);
      StoreRows(e, z, kTileCols, r0, r1, c0, c1);
    }
  });
}

// --------------------------------------------------------------- workspace plan
// The float buffers one call needs, carved from the workspace in this order.
class Plan {
 public:
  explicit Plan(float* base) : base_(base) {}
  float* Take(int64_t floats) {
    float* p = base_ == nullptr ? nullptr : base_ + used_;
    used_ += floats;
    return p;
  }
  int64_t used() const { return used_; }

 private:
  float* base_;
  int64_t used_ = 0;
};

// A float view of a [rows, cols] operand: the data itself when it already is float32,
// unmasked and needs no rounding, else a converted copy from the plan (filled when
// `cpu` has a workspace).
const float* FloatView(const Operand& op, int64_t rows, int64_t cols, Plan* plan, const CpuContext* cpu) {
  if (op.type == DType::kFloat32 && !op.masked && !op.round_to_half) {
    return static_cast<const float*>(op.src);
  }
  float* dst = plan->Take(rows * cols);
  if (cpu != nullptr && rows * cols > 0) {
    ParallelRows(*cpu, rows, cols, [&](int64_t r0, int64_t r1) { ConvertRows(op, cols, r0, r1, dst); });
  }
  return dst;
}

// dst [cols, rows] = src^T, src [rows, cols]; blocked for the caches.
void Transpose(const float* src, int64_t rows, int64_t cols, float* dst, const CpuContext& cpu) {
  constexpr int64_t kB = 32;
  ParallelRows(cpu, CeilDiv(cols, kB), kB * rows, [&](int64_t b0, int64_t b1) {
    for (int64_t cb = b0 * kB; cb < std::min(cols, b1 * kB); cb += kB) {
      const int64_t ce = std::min(cols, cb + kB);
      for (int64_t rb = 0; rb < rows; rb += kB) {
        const int64_t re = std::min(rows, rb + kB);
        for (int64_t c = cb; c < ce; ++c) {
          for (int64_t r = rb; r < re; ++r) dst[c * rows + r] = src[r * cols + c];
        }
      }
    }
  });
}

bool HalfAcc(const DenseConfig& c) { return c.accumulator == Accumulator::kFloat16; }
// float32 data is rounded to half before half accumulation.
bool RoundInputs(const DenseConfig& c) { return HalfAcc(c) && c.dtype == DType::kFloat32; }

// ---------------------------------------------------------------- forward
int64_t Forward(const DenseDims& d, const DenseConfig& c, const DenseForwardArgs& a, const CpuContext* cpu) {
  Plan plan(cpu != nullptr ? cpu->workspace : nullptr);
  const Operand xo{a.x, c.dtype, nullptr, RoundInputs(c), false}, wo{a.kernel, c.dtype, nullptr, RoundInputs(c), false};
  const float* x = FloatView(xo, d.rows, d.in, &plan, cpu);
  const float* w = FloatView(wo, d.in, d.out, &plan, cpu);
  const float* bias = static_cast<const float*>(a.bias);
  if (c.dtype == DType::kFloat16) {  // (counted whether or not there is a bias: sizing has no pointers)
    float* converted = plan.Take(d.out);
    if (a.bias != nullptr && cpu != nullptr) {
      ConvertRows(Operand{a.bias, c.dtype, nullptr, false, false}, d.out, 0, 1, converted);
      bias = converted;
    }
  }
  const Epilogue e{bias, c.activation, c.dtype, a.y, d.out};
  if (HalfAcc(c)) {
    if (cpu != nullptr) RunHalfAcc(d.rows, d.out, d.in, x, w, e, *cpu);
    return plan.used();
  }
  float* z = c.dtype == DType::kFloat32 ? static_cast<float*>(a.y) : plan.Take(d.rows * d.out);
  if (cpu != nullptr) RunGemm(Gemm{d.rows, d.out, d.in, x, d.in, false, w, d.out, false, z, e}, *cpu);
  return plan.used();
}

// ---------------------------------------------------------------- input gradient
int64_t BackpropInput(const DenseDims& d, const DenseConfig& c, const DenseBackpropInputArgs& a,
                      const CpuContext* cpu) {
  Plan plan(cpu != nullptr ? cpu->workspace : nullptr);
  const bool relu = c.activation == Activation::kRelu;
  const float* g = FloatView(Operand{a.dy, c.dtype, a.y, RoundInputs(c), relu}, d.rows, d.out, &plan, cpu);
  const float* w = FloatView(Operand{a.kernel, c.dtype, nullptr, RoundInputs(c), false}, d.in, d.out, &plan, cpu);
  const Epilogue e{nullptr, Activation::kNone, c.dtype, a.dx, d.in};
  if (HalfAcc(c)) {
    float* wt = plan.Take(d.in * d.out);  // W^T [M, K]: the model's b, row-major
    if (cpu != nullptr) {
      Transpose(w, d.in, d.out, wt, *cpu);
      RunHalfAcc(d.rows, d.in, d.out, g, wt, e, *cpu);
    }
    return plan.used();
  }
  float* z = c.dtype == DType::kFloat32 ? static_cast<float*>(a.dx) : plan.Take(d.rows * d.in);
  if (cpu != nullptr) RunGemm(Gemm{d.rows, d.in, d.out, g, d.out, false, w, d.out, true, z, e}, *cpu);
  return plan.used();
}

// ---------------------------------------------------------------- kernel gradient
TFMPS_DENSE_CLONES
void ColumnSums(const float* g, int64_t rows, int64_t cols, int64_t c0, int64_t c1, float* __restrict out) {
  for (int64_t c = c0; c < c1; ++c) out[c] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict gr = g + r * cols;
    for (int64_t c = c0; c < c1; ++c) out[c] += gr[c];
  }
}

int64_t BackpropKernel(const DenseDims& d, const DenseConfig& c, const DenseBackpropKernelArgs& a,
                       const CpuContext* cpu) {
  Plan plan(cpu != nullptr ? cpu->workspace : nullptr);
  const bool relu = c.activation == Activation::kRelu;
  const float* g = FloatView(Operand{a.dy, c.dtype, a.y, RoundInputs(c), relu}, d.rows, d.out, &plan, cpu);
  const float* x = FloatView(Operand{a.x, c.dtype, nullptr, RoundInputs(c), false}, d.rows, d.in, &plan, cpu);
  const Epilogue e{nullptr, Activation::kNone, c.dtype, a.dkernel, d.out};
  const Epilogue eb{nullptr, Activation::kNone, c.dtype, a.dbias, d.out};
  if (HalfAcc(c)) {
    float* xt = plan.Take(d.rows * d.in);  // x^T [K, N]
    float* ones = a.dbias != nullptr ? plan.Take(d.rows) : nullptr;
    if (cpu != nullptr) {
      Transpose(x, d.rows, d.in, xt, *cpu);
      RunHalfAcc(d.in, d.out, d.rows, xt, g, e, *cpu);
      if (ones != nullptr) {
        std::fill(ones, ones + d.rows, 1.0f);
        RunHalfAcc(1, d.out, d.rows, ones, g, eb, *cpu);
      }
    }
    return plan.used();
  }
  float* z = c.dtype == DType::kFloat32 ? static_cast<float*>(a.dkernel) : plan.Take(d.in * d.out);
  float* zb = a.dbias == nullptr ? nullptr
              : c.dtype == DType::kFloat32 ? static_cast<float*>(a.dbias)
                                           : plan.Take(d.out);
  if (cpu != nullptr) {
    RunGemm(Gemm{d.in, d.out, d.rows, x, d.in, true, g, d.out, false, z, e}, *cpu);
    if (zb != nullptr && d.out > 0) {
      constexpr int64_t kCols = 256;
      ParallelRows(*cpu, CeilDiv(d.out, kCols), kCols * std::max<int64_t>(d.rows, 1), [&](int64_t b0, int64_t b1) {
        const int64_t c0 = b0 * kCols, c1 = std::min(d.out, b1 * kCols);
        ColumnSums(g, d.rows, d.out, c0, c1, zb);
        StoreRows(eb, zb + c0, d.out, 0, 1, c0, c1);
      });
    }
  }
  return plan.used();
}

}  // namespace

double RoundToHalf(double s) { return HalfRound(s); }

int64_t DenseForwardCpuWorkspace(const DenseDims& d, const DenseConfig& c) {
  return Forward(d, c, DenseForwardArgs{nullptr, nullptr, nullptr, nullptr}, nullptr);
}
int64_t DenseBackpropInputCpuWorkspace(const DenseDims& d, const DenseConfig& c) {
  return BackpropInput(d, c, DenseBackpropInputArgs{nullptr, nullptr, nullptr, nullptr}, nullptr);
}
int64_t DenseBackpropKernelCpuWorkspace(const DenseDims& d, const DenseConfig& c, bool bias) {
  static float dummy;  // only its being non-null counts: nothing is written when sizing
  return BackpropKernel(d, c, DenseBackpropKernelArgs{nullptr, nullptr, nullptr, nullptr, bias ? &dummy : nullptr},
                        nullptr);
}

void DenseForwardCpu(const DenseDims& d, const DenseConfig& c, const DenseForwardArgs& a, const CpuContext& cpu) {
  Forward(d, c, a, &cpu);
}
void DenseBackpropInputCpu(const DenseDims& d, const DenseConfig& c, const DenseBackpropInputArgs& a,
                           const CpuContext& cpu) {
  BackpropInput(d, c, a, &cpu);
}
void DenseBackpropKernelCpu(const DenseDims& d, const DenseConfig& c, const DenseBackpropKernelArgs& a,
                            const CpuContext& cpu) {
  BackpropKernel(d, c, a, &cpu);
}

}  // namespace dense
}  // namespace tfmps
