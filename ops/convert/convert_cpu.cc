// CPU backend of the convert family. The kernels are in convert_kernels.inc; this file
// holds what they share and picks, once per process, which build of them runs.
//
// Work is split into (item, pixel block) units; a layout pair whose pixels are both
// channel-packed (NHWC, sequence, HWC matrix) streams contiguously, an image on either
// side is walked in tiles of 32 pixels slice by slice, CHW goes through 8 x 8 register
// transposes (AVX2 build; BLAS's omatcopy or 16 x 8 tiles in the portable one), and
// sequence <-> time-major through square tiles of rows. Why each is shaped so, with
// measurements: docs/converters.md. The value conversions are branch-free.
//
// x86-64 with GCC: the kernels are compiled a second time for AVX2 + FMA + F16C (hardware
// half conversions, SSE pixel paths, 8 x 8 register transposes) and used when the
// processor has all three;
// TFMPS_CONVERT_ISA=base (read once) forces the portable build. arm64 always has
// hardware half conversions (_Float16).
//
// Built with -ffp-contract=off: x*scale + bias is two roundings, as on every backend.
#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TFMPS_CONVERT_HAVE_AVX2_BUILD 1
#include <immintrin.h>
#endif

#include "ops/common/blas.h"
#include "ops/convert/convert.h"

namespace tfmps {
namespace convert {
namespace {

// ------------------------------------------------------------ value conversions
using Half = uint16_t;  // IEEE binary16 bits

template <typename To, typename From>
inline To BitCast(From x) {
  static_assert(sizeof(To) == sizeof(From), "size");
  To out;
  std::memcpy(&out, &x, sizeof(out));
  return out;
}

// q / 255 for every byte, computed when the library loads: a table read instead of a
// division (the loops that read uint8 are not vectorized: gathering bytes costs more).
struct Unorm8Table {
  float value[256];
  Unorm8Table() {
    for (int q = 0; q < 256; ++q) value[q] = static_cast<float>(q) / 255.0f;
  }
};
const Unorm8Table kUnorm8;
}  // namespace

namespace isa_base {
#if defined(__aarch64__)
#define TFMPS_NATIVE_HALF 1
#endif
#include "ops/convert/convert_kernels.inc"  // NOLINT(build/include)
#undef TFMPS_NATIVE_HALF
}  // namespace isa_base

#if defined(TFMPS_CONVERT_HAVE_AVX2_BUILD)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace isa_avx2 {
#define TFMPS_CONVERT_AVX2 1
#define TFMPS_NATIVE_HALF 1
#include "ops/convert/convert_kernels.inc"  // NOLINT(build/include)
#undef TFMPS_NATIVE_HALF
#undef TFMPS_CONVERT_AVX2
}  // namespace isa_avx2
#pragma GCC pop_options
#endif

namespace {
// Whether the AVX2 build runs: decided once, on first use.
bool UseAvx2Build() {
#if defined(TFMPS_CONVERT_HAVE_AVX2_BUILD)
  static const bool avx2 = [] {
    const char* isa = std::getenv("TFMPS_CONVERT_ISA");
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

void ConvertCpu(const ConvertArgs& a, const ParallelFor& parallel) {
#if defined(TFMPS_CONVERT_HAVE_AVX2_BUILD)
  if (UseAvx2Build()) return isa_avx2::ConvertCpuImpl(a, parallel);
#endif
  isa_base::ConvertCpuImpl(a, parallel);
}

const char* ConvertCpuIsa() { return UseAvx2Build() ? "avx2+fma+f16c" : "base"; }

}  // namespace convert
}  // namespace tfmps
