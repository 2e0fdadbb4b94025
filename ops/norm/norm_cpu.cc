// The CPU backend of batch and instance normalization (math and summation in norm.h).
//
// Work is cut into units that depend only on the shape, never on the thread count: a
// block of about kBlockElements values of one group, and for C > kMaxLanes one tile of
// kMaxLanes channels. Each unit writes its partial sums to its own slot of the workspace;
// slots are combined in float64 in block order, so results are the same bits for any
// number of threads (and for both builds of the loops, which sum every lane in row order).
// Passes over x: training forward 2 (statistics, then y), inference forward 1; training
// backward 2 (sums, then dx), inference backward 1 (sums and dx together).
//
// x86-64 with GCC: the loops (norm_cpu_kernels.inc) are compiled a second time for
// AVX2 + F16C (256-bit vectors, hardware half conversions) and used when the processor
// has both; TFMPS_NORM_ISA=base (read once) forces the portable build.
// Built with -ffp-contract=off: no fused multiply-adds, the same roundings in every build.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TFMPS_NORM_HAVE_AVX2_BUILD 1
#include <immintrin.h>
#endif

#include "ops/norm/norm.h"

namespace tfmps {
namespace norm {
namespace {

// Values per unit: a unit's rows (and their float copy, for float16) stay in L1 between
// its two statistics passes.
constexpr int64_t kBlockElements = 8192;
// Lanes per unit row: channels per tile (C > kMaxLanes is cut into tiles of this many).
constexpr int64_t kMaxLanes = 1024;
// With C < kMinLanes, ceil(kMinLanes / C) rows form one super-row of k*C lanes.
constexpr int64_t kMinLanes = 64;
// Channels per task when combining the block partials.
constexpr int64_t kCombineChunk = 64;
// Outputs of at least this many bytes (float32) are written with non-temporal stores:
// larger than what the caches would keep for the next op anyway (measured on the 25 MB
// N32 56x56 C64: 1.15 vs 1.57 ms inference forward, 2.85 vs 3.27 ms training; at 12.8 MB
// no gain).
constexpr int64_t kStreamBytes = int64_t{16} << 20;
// Rough cycles per unit, for the ParallelFor's split.
constexpr int64_t kUnitCost = kBlockElements * 2;

// ------------------------------------------------------------ float16 <-> float
template <typename To, typename From>
inline To BitCast(From x) {
  static_assert(sizeof(To) == sizeof(From), "size");
  To out;
  std::memcpy(&out, &x, sizeof(out));
  return out;
}

// binary16 -> binary32, exact: the magnitude's bits moved into a float whose exponent is
// 112 too small, times 2^112 (which also normalizes subnormals); Inf/NaN keep all ones.
inline float HalfToFloat(uint16_t h) {
  const uint32_t magnitude = static_cast<uint32_t>(h & 0x7fffu) << 13;
  float f = BitCast<float>(magnitude) * 0x1p112f;
  uint32_t bits = BitCast<uint32_t>(f);
  if ((h & 0x7c00u) == 0x7c00u) bits = magnitude | 0x7f800000u;
  return BitCast<float>(bits | (static_cast<uint32_t>(h & 0x8000u) << 16));
}

// binary32 -> binary16, round to nearest even (as TF's Eigen::half casts).
inline uint16_t FloatToHalf(float f) {
  const uint32_t raw = BitCast<uint32_t>(f);
  const uint32_t sign = (raw >> 16) & 0x8000u;
  const uint32_t bits = raw & 0x7fffffffu;
  uint32_t out;
  if (bits >= 0x47800000u) {  // overflow to Inf, or Inf/NaN (quiet)
    out = bits > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (bits < 0x38800000u) {  // a half subnormal or zero: the FPU rounds at 2^-24
    out = BitCast<uint32_t>(BitCast<float>(bits) + 0.5f) - 0x3f000000u;
  } else {  // normal: rebias the exponent, round half to even
    out = (bits - 0x37fff001u + ((bits >> 13) & 1u)) >> 13;
  }
  return static_cast<uint16_t>(out | sign);
}

// ------------------------------------------------------------ the plan of units
struct Unit {
  int64_t group, block, tile;
  int64_t offset;    // of its first value in x
  int64_t rows;      // super-rows
  int64_t width;     // lanes of each row
  int64_t tail;      // lanes of the last row (< width for a group's partial last super-row)
  int64_t count;     // rows of x (values per channel) it holds
  int64_t channel0;  // its first channel (tiles)
};

struct Plan {
  int64_t G = 1, R = 0, C = 0;
  int64_t k = 1;       // rows of x per super-row
  int64_t W = 0;       // lanes of a full row: k*C (k > 1) or the tile width
  int64_t stride = 0;  // between super-rows: k*C
  int64_t tiles = 1;
  int64_t srows = 0;   // super-rows per group
  int64_t block = 1;   // super-rows per block
  int64_t blocks = 0;  // blocks per group
  bool stream = false;  // float32 outputs written with non-temporal stores (AVX2 build)

  explicit Plan(const NormShape& s) : G(s.groups), R(s.rows), C(s.channels) {
    if (C < kMinLanes) {
      k = (kMinLanes + C - 1) / C;
      W = k * C;
    } else {
      tiles = (C + kMaxLanes - 1) / kMaxLanes;
      W = std::min(C, kMaxLanes);
    }
    stride = k * C;
    srows = (R + k - 1) / k;
    block = std::max<int64_t>(1, kBlockElements / W);
    blocks = (srows + block - 1) / block;
  }
  int64_t units() const { return G * blocks * tiles; }
  // Rows of x in block b.
  int64_t count(int64_t b) const { return std::min(R, (b + 1) * block * k) - b * block * k; }
  Unit unit(int64_t i) const {
    Unit u;
    u.tile = i % tiles;
    u.block = (i / tiles) % blocks;
    u.group = i / (tiles * blocks);
    const int64_t s0 = u.block * block, s1 = std::min(srows, s0 + block);
    u.rows = s1 - s0;
    u.channel0 = u.tile * kMaxLanes;
    u.width = k > 1 ? W : std::min(kMaxLanes, C - u.channel0);
    u.tail = (k > 1 && s1 == srows && R % k != 0) ? (R % k) * C : u.width;
    u.count = count(u.block);
    u.offset = u.group * R * C + s0 * stride + u.channel0;
    return u;
  }
};

// The per-lane coefficients of the training dx (BackwardDxUnit); stats: e and f are used.
struct DxLanes {
  const float *a, *b, *c, *e, *f;
  bool stats;
};

}  // namespace

namespace isa_base {
#include "ops/norm/norm_cpu_kernels.inc"  // NOLINT(build/include)
}  // namespace isa_base

#if defined(TFMPS_NORM_HAVE_AVX2_BUILD)
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
namespace isa_avx2 {
#define TFMPS_NORM_F16C 1
#include "ops/norm/norm_cpu_kernels.inc"  // NOLINT(build/include)
#undef TFMPS_NORM_F16C
}  // namespace isa_avx2
#pragma GCC pop_options
#endif

namespace {
bool UseAvx2Build() {
#if defined(TFMPS_NORM_HAVE_AVX2_BUILD)
  static const bool avx2 = [] {
    const char* isa = std::getenv("TFMPS_NORM_ISA");
    const bool forced_base = isa != nullptr && std::strcmp(isa, "base") == 0;
    return !forced_base && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  }();
  return avx2;
#else
  return false;
#endif
}
}  // namespace

int64_t ForwardCpuWorkspace(const NormShape& s, bool training) {
  if (!training) return 0;
  const Plan p(s);
  return 3 * p.G * p.blocks * p.C;
}

int64_t BackwardCpuWorkspace(const NormShape& s, bool training) {
  const Plan p(s);
  // partials [G, blocks, C, 2], sums [G, C, 2], coefficients [G, C, 5] floats
  return 2 * p.G * p.blocks * p.C + 2 * p.G * p.C + (training ? 3 * p.G * p.C : 0);
}

namespace {
// Whether a float32 output of `s` is streamed (the AVX2 build only).
bool Stream(const NormShape& s, DataType dtype) {
  return dtype == DataType::kFloat32 && UseAvx2Build() &&
         s.groups * s.rows * s.channels * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
}
}  // namespace

void ForwardCpu(const NormShape& s, const ForwardArgs& a, double* workspace, const ParallelFor& parallel) {
  Plan p(s);
  p.stream = Stream(s, a.dtype);
#if defined(TFMPS_NORM_HAVE_AVX2_BUILD)
  if (UseAvx2Build()) return isa_avx2::Forward(p, a, workspace, parallel);
#endif
  isa_base::Forward(p, a, workspace, parallel);
}

void BackwardCpu(const NormShape& s, const BackwardArgs& a, double* workspace, const ParallelFor& parallel) {
  Plan p(s);
  p.stream = Stream(s, a.dtype);
#if defined(TFMPS_NORM_HAVE_AVX2_BUILD)
  if (UseAvx2Build()) return isa_avx2::Backward(p, a, workspace, parallel);
#endif
  isa_base::Backward(p, a, workspace, parallel);
}

const char* NormCpuIsa() { return UseAvx2Build() ? "avx2" : "base"; }

}  // namespace norm
}  // namespace tfmps
