// CPU backend of the convert family. Work is split by rows (n, h); inside a row, a
// layout pair whose pixels are both channel-packed (NHWC, sequence, time-major, HWC
// matrix) is one contiguous run; any other pair (an image or a CHW matrix on either
// side) becomes one strided run per channel. Both kinds of loop vectorize: the value
// conversions below are branch-free.
//
// Built with -ffp-contract=off: x*scale + bias is two roundings, as on every backend.
//
// On x86-64 this file is compiled twice: as is (SSE2, half conversions in integer
// arithmetic) and with -mavx2 -mf16c -DTFMPS_CONVERT_AVX2 (hardware half conversions),
// and ConvertCpu picks the second when the processor has F16C and AVX2. On arm64 the
// hardware conversions are always there (_Float16).
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(TFMPS_CONVERT_AVX2)
#include <immintrin.h>
#endif

#include "ops/common/blas.h"
#include "ops/convert/convert.h"

#if defined(TFMPS_CONVERT_AVX2) || defined(__aarch64__)
#define TFMPS_NATIVE_HALF 1
#endif
#if defined(TFMPS_CONVERT_AVX2)
#define TFMPS_CONVERT_ISA isa_avx2
#else
#define TFMPS_CONVERT_ISA isa_base
#endif

namespace tfmps {
namespace convert {

#if !defined(TFMPS_CONVERT_AVX2)  // defined once, in the base build
int64_t NumElements(Layout layout, const Geometry& g) {
  return layout == Layout::kImage ? g.n * g.slices() * g.h * g.w * 4 : g.n * g.h * g.w * g.c;
}

int64_t Offset(Layout layout, const Geometry& g, int64_t n, int64_t h, int64_t w, int64_t c) {
  switch (layout) {
    case Layout::kNhwc:
    case Layout::kSequence:
    case Layout::kMatrixHwc:
      return ((n * g.h + h) * g.w + w) * g.c + c;
    case Layout::kTimeMajor:
      return ((h * g.n + n) * g.w + w) * g.c + c;
    case Layout::kImage:
      return (((n * g.slices() + c / 4) * g.h + h) * g.w + w) * 4 + c % 4;
    case Layout::kMatrixChw:
      return n * g.c * g.h * g.w + (c * g.h + h) * g.w + w;
  }
  return 0;
}
#endif

namespace TFMPS_CONVERT_ISA {
void ConvertCpuImpl(const ConvertArgs& a, const ParallelFor& parallel);

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

// binary16 -> binary32, exact. The exponent and mantissa move into float position and
// the exponent is rebiased; Inf/NaN get the all-ones exponent; subnormal halves are
// renormalized with one float subtraction. No float subnormal is ever formed: TF's
// threads run with flush-to-zero, which would lose them.
inline float HalfToFloat(Half h) {
  const int32_t sign = static_cast<int32_t>(h & 0x8000) << 16;
  const int32_t shifted = static_cast<int32_t>(h & 0x7fff) << 13;
  const int32_t exponent = shifted & 0x0f800000;
  const int32_t normal = shifted + 0x38000000;   // + (127 - 15) << 23
  const int32_t special = shifted + 0x70000000;  // exponent 31 -> 255
  const float subnormal = BitCast<float>(normal + 0x00800000) - 0x1p-14f;
  const int32_t bits = exponent == 0x0f800000 ? special
                       : exponent == 0         ? BitCast<int32_t>(subnormal)
                                               : normal;
  return BitCast<float>(bits | sign);
}

// binary32 -> binary16, round to nearest even (as float16 casts in TF, NumPy and Metal).
inline Half FloatToHalf(float f) {
  // Signed 32-bit arithmetic throughout: after clearing the sign bit the values fit,
  // and signed compares are what SSE2 can vectorize.
  const int32_t raw = BitCast<int32_t>(f);
  const int32_t sign = (raw >> 16) & 0x8000;
  const int32_t bits = raw & 0x7fffffff;
  // Three candidates, one select (branch-free, so loops over it vectorize):
  // too large for half (or Inf/NaN);
  const int32_t big = bits > 0x7f800000 ? 0x7e00 : 0x7c00;
  // subnormal or zero result: adding 0.5 aligns the mantissa so the FPU rounds (to
  // nearest even) at half's subnormal precision, and the low bits are the half's bits;
  const int32_t tiny = BitCast<int32_t>(BitCast<float>(bits) + 0.5f) - 0x3f000000;
  // normal: rebias the exponent ((15 - 127) << 23) and round half to even.
  const int32_t normal = (bits - 0x37fff001 + ((bits >> 13) & 1)) >> 13;
  const int32_t out = bits >= 0x47800000 ? big : (bits < 0x38800000 ? tiny : normal);
  return static_cast<Half>(out | sign);
}

// unorm8: q / 255, and back with round-to-nearest-even of clamp(y, 0, 1) * 255. The
// magic constant 2^23 makes the FPU round a value in [0, 255] to an integer.
// q / 255 for every byte, computed when the library loads: a table read instead of a
// division (the loops that read uint8 are not vectorized: gathering bytes costs more).
struct Unorm8Table {
  float value[256];
  Unorm8Table() {
    for (int q = 0; q < 256; ++q) value[q] = static_cast<float>(q) / 255.0f;
  }
};
const Unorm8Table kUnorm8;
inline float Unorm8ToFloat(uint8_t q) { return kUnorm8.value[q]; }
inline uint8_t FloatToUnorm8(float y) {
  float v = y * 255.0f;
  v = v > 0.0f ? v : 0.0f;  // also maps NaN to 0
  v = v < 255.0f ? v : 255.0f;
  return static_cast<uint8_t>((v + 8388608.0f) - 8388608.0f);
}

template <typename T> struct Codec;
template <> struct Codec<float> {
  static float Load(float x) { return x; }
  static float Store(float y) { return y; }
};
template <> struct Codec<Half> {
#if defined(TFMPS_NATIVE_HALF)
  static float Load(Half x) { return static_cast<float>(BitCast<_Float16>(x)); }
  static Half Store(float y) { return BitCast<Half>(static_cast<_Float16>(y)); }
#else
  static float Load(Half x) { return HalfToFloat(x); }
  static Half Store(float y) { return FloatToHalf(y); }
#endif
};
template <> struct Codec<uint8_t> {
  static float Load(uint8_t x) { return Unorm8ToFloat(x); }
  static uint8_t Store(float y) { return FloatToUnorm8(y); }
};

// One element: load, optional per-channel affine, store.
template <typename S, typename D, bool kAffine, bool kInverse>
inline D Convert(S x, float scale, float bias) {
  float v = Codec<S>::Load(x);
  if (kAffine) v = kInverse ? (v - bias) / scale : v * scale + bias;
  return Codec<D>::Store(v);
}

#if defined(TFMPS_CONVERT_AVX2)
// One pixel of up to 4 channels as one SSE vector (AVX2 build only): images keep 4
// channels per slice, so a pixel of C <= 4 channels converts with a handful of vector
// instructions instead of one scalar conversion per channel. Same arithmetic as the
// scalar path: exact q/255, x*scale + bias in two roundings, round-to-nearest-even.
template <typename S, int N> inline __m128 LoadPixel(const S* in);
template <int N> inline __m128 LoadPixelFloats(const float* in) {
  if (N == 4) return _mm_loadu_ps(in);
  return _mm_setr_ps(in[0], N > 1 ? in[1] : 0.0f, N > 2 ? in[2] : 0.0f, 0.0f);
}
template <> inline __m128 LoadPixel<float, 1>(const float* in) { return LoadPixelFloats<1>(in); }
template <> inline __m128 LoadPixel<float, 2>(const float* in) { return LoadPixelFloats<2>(in); }
template <> inline __m128 LoadPixel<float, 3>(const float* in) { return LoadPixelFloats<3>(in); }
template <> inline __m128 LoadPixel<float, 4>(const float* in) { return LoadPixelFloats<4>(in); }
template <int N> inline __m128 LoadPixelBytes(const uint8_t* in) {
  const float* t = kUnorm8.value;
  return _mm_setr_ps(t[in[0]], N > 1 ? t[in[1]] : 0.0f, N > 2 ? t[in[2]] : 0.0f, N > 3 ? t[in[3]] : 0.0f);
}
template <> inline __m128 LoadPixel<uint8_t, 1>(const uint8_t* in) { return LoadPixelBytes<1>(in); }
template <> inline __m128 LoadPixel<uint8_t, 2>(const uint8_t* in) { return LoadPixelBytes<2>(in); }
template <> inline __m128 LoadPixel<uint8_t, 3>(const uint8_t* in) { return LoadPixelBytes<3>(in); }
template <> inline __m128 LoadPixel<uint8_t, 4>(const uint8_t* in) { return LoadPixelBytes<4>(in); }
template <int N> inline __m128 LoadPixelHalves(const Half* in) {
  uint64_t bits = 0;  // never read past the pixel
  std::memcpy(&bits, in, N * sizeof(Half));
  return _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(bits)));
}
template <> inline __m128 LoadPixel<Half, 1>(const Half* in) { return LoadPixelHalves<1>(in); }
template <> inline __m128 LoadPixel<Half, 2>(const Half* in) { return LoadPixelHalves<2>(in); }
template <> inline __m128 LoadPixel<Half, 3>(const Half* in) { return LoadPixelHalves<3>(in); }
template <> inline __m128 LoadPixel<Half, 4>(const Half* in) { return LoadPixelHalves<4>(in); }

// Stores the first N lanes (an image pixel: N = 4, padding lanes already zero).
template <int N> inline void StorePixel(float* out, __m128 v) {
  if (N == 4) {
    _mm_storeu_ps(out, v);
  } else {
    alignas(16) float tmp[4];
    _mm_store_ps(tmp, v);
    std::memcpy(out, tmp, N * sizeof(float));
  }
}
template <int N> inline void StorePixel(Half* out, __m128 v) {
  const long long bits = _mm_cvtsi128_si64(_mm_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  std::memcpy(out, &bits, N * sizeof(Half));
}
template <int N> inline void StorePixel(uint8_t* out, __m128 v) {
  // max(NaN, 0) is 0 here (maxps returns its second operand), like FloatToUnorm8.
  v = _mm_min_ps(_mm_max_ps(_mm_mul_ps(v, _mm_set1_ps(255.0f)), _mm_setzero_ps()), _mm_set1_ps(255.0f));
  const __m128i q = _mm_cvtps_epi32(v);  // MXCSR rounding: nearest even
  const int bytes = _mm_cvtsi128_si32(_mm_packus_epi16(_mm_packs_epi32(q, q), q));
  std::memcpy(out, &bytes, N);
}

template <bool kAffine, bool kInverse>
inline __m128 AffinePixel(__m128 v, __m128 scale, __m128 bias) {
  if (!kAffine) return v;
  return kInverse ? _mm_div_ps(_mm_sub_ps(v, bias), scale) : _mm_add_ps(_mm_mul_ps(v, scale), bias);
}
#endif

// ------------------------------------------------------------ layout walking
// Element strides of a layout: n, h and w steps, and the offset of channel c inside a
// pixel (the index maps of convert.h, taken apart).
struct Strides {
  int64_t n = 0, h = 0, w = 0;
  int64_t slice = 0;  // kImage: distance between slices of 4 channels
  Layout layout;
  bool packed() const { return layout != Layout::kImage && layout != Layout::kMatrixChw; }
  int64_t Channel(int64_t c) const {
    if (layout == Layout::kImage) return (c / 4) * slice + c % 4;
    if (layout == Layout::kMatrixChw) return c * slice;
    return c;
  }
};

Strides StridesOf(Layout l, const Geometry& g) {
  Strides s;
  s.layout = l;
  switch (l) {
    case Layout::kNhwc:
    case Layout::kSequence:
    case Layout::kMatrixHwc:
      s.n = g.h * g.w * g.c, s.h = g.w * g.c, s.w = g.c;
      break;
    case Layout::kTimeMajor:
      s.n = g.w * g.c, s.h = g.n * g.w * g.c, s.w = g.c;
      break;
    case Layout::kImage:
      s.slice = g.h * g.w * 4, s.n = g.slices() * s.slice, s.h = g.w * 4, s.w = 4;
      break;
    case Layout::kMatrixChw:
      s.slice = g.h * g.w, s.n = g.c * s.slice, s.h = g.w, s.w = 1;
      break;
  }
  return s;
}

// Pixels per work unit when one side is an image or CHW matrix: that side is swept
// slice by slice (or channel by channel) over the block, reading or writing one cache
// line per pixel of the packed side, so the block's lines (256 x 64 B) stay in L1 and
// each run on the other side is 256 pixels long.
constexpr int64_t kBlockPixels = 256;
// Elements per work unit when both sides are channel-packed (plain streaming).
constexpr int64_t kFlatElements = 16384;

// A run of pixels p = h*W + w inside one item n. Every layout places pixel p at
// p * PixelStride() from the item's start (time-major has W = 1 and steps by h).
int64_t PixelStride(const Strides& s, const Geometry& g) { return g.w == 1 ? s.h : s.w; }

template <typename S, typename D, bool kAffine, bool kInverse>
struct Kernels {
  static D Cvt(S x, float sc, float bi) { return Convert<S, D, kAffine, kInverse>(x, sc, bi); }

  // A contiguous run on both sides (affine expanded per element, period C).
  static void Flat(const S* __restrict s, D* __restrict d, int64_t count, const float* __restrict sc,
                   const float* __restrict bi) {
    for (int64_t i = 0; i < count; ++i) d[i] = Cvt(s[i], kAffine ? sc[i] : 1.0f, kAffine ? bi[i] : 0.0f);
  }

  // Packed pixels -> image. Pixel by pixel (the pixel's channels are read once, in
  // order), writing 4 channels into each slice: S write streams advancing together.
  // The last slice's missing channels are zeroed.
  template <int kTail>
  static void ToImageT(const S* __restrict s, D* __restrict d, int64_t pixels, int64_t src_step,
                       int64_t full, int64_t slice, const float* sc, const float* bi) {
    for (int64_t p = 0; p < pixels; ++p) {
      const S* __restrict in = s + p * src_step;
      D* __restrict out = d + p * 4;
      for (int64_t s4 = 0; s4 < full; ++s4) {
        for (int k = 0; k < 4; ++k) out[s4 * slice + k] = Cvt(in[s4 * 4 + k], sc[s4 * 4 + k], bi[s4 * 4 + k]);
      }
      if (kTail > 0) {
        D* __restrict last = out + full * slice;
        for (int k = 0; k < 4; ++k) {
          last[k] = k < kTail ? Cvt(in[full * 4 + k], sc[full * 4 + k], bi[full * 4 + k]) : D(0);
        }
      }
    }
  }

  // Packed pixels -> image, slice by slice (many channels): each slice's run of the
  // block is written contiguously while the block being read stays in L1.
  template <int kTail>
  static void ToImageSlices(const S* __restrict s, D* __restrict d, int64_t pixels, int64_t src_step,
                            int64_t full, int64_t slice, const float* sc, const float* bi) {
    for (int64_t s4 = 0; s4 < full; ++s4) {
      const S* __restrict in = s + s4 * 4;
      D* __restrict out = d + s4 * slice;
      const float* ss = sc + s4 * 4;
      const float* bb = bi + s4 * 4;
      for (int64_t p = 0; p < pixels; ++p) {
        for (int k = 0; k < 4; ++k) out[p * 4 + k] = Cvt(in[p * src_step + k], ss[k], bb[k]);
      }
    }
    if (kTail > 0) {
      const S* __restrict in = s + full * 4;
      D* __restrict out = d + full * slice;
      const float* ss = sc + full * 4;
      const float* bb = bi + full * 4;
      for (int64_t p = 0; p < pixels; ++p) {
        for (int k = 0; k < 4; ++k) out[p * 4 + k] = k < kTail ? Cvt(in[p * src_step + k], ss[k], bb[k]) : D(0);
      }
    }
  }

#if defined(TFMPS_CONVERT_AVX2)
  // C <= 4: one vector per pixel. The image side always has 4 lanes; the packed side N.
  template <int N>
  static void ToImage4(const S* __restrict s, D* __restrict d, int64_t pixels, int64_t src_step,
                       const float* sc, const float* bi) {
    const __m128 scale = _mm_loadu_ps(sc), bias = _mm_loadu_ps(bi);
    for (int64_t p = 0; p < pixels; ++p) {
      const __m128 v = AffinePixel<kAffine, kInverse>(LoadPixel<S, N>(s + p * src_step), scale, bias);
      // Padding lanes: the scalar path writes D(0) there whatever the affine gives.
      StorePixel<4>(d + p * 4, N == 4 ? v : _mm_and_ps(v, PaddingMask<N>()));
    }
  }
  template <int N>
  static void FromImage4(const S* __restrict s, D* __restrict d, int64_t pixels, int64_t dst_step,
                         const float* sc, const float* bi) {
    const __m128 scale = _mm_loadu_ps(sc), bias = _mm_loadu_ps(bi);
    for (int64_t p = 0; p < pixels; ++p) {
      const __m128 v = AffinePixel<kAffine, kInverse>(LoadPixel<S, 4>(s + p * 4), scale, bias);
      StorePixel<N>(d + p * dst_step, v);
    }
  }
  template <int N>
  static __m128 PaddingMask() {
    return _mm_castsi128_ps(_mm_setr_epi32(-1, N > 1 ? -1 : 0, N > 2 ? -1 : 0, 0));
  }
#endif

  static void ToImage(const S* s, D* d, int64_t pixels, int64_t src_step, int64_t C, int64_t slice,
                      const float* sc, const float* bi) {
    const int64_t full = C / 4;
#if defined(TFMPS_CONVERT_AVX2)
    switch (C) {
      case 1: return ToImage4<1>(s, d, pixels, src_step, sc, bi);
      case 2: return ToImage4<2>(s, d, pixels, src_step, sc, bi);
      case 3: return ToImage4<3>(s, d, pixels, src_step, sc, bi);
      case 4: return ToImage4<4>(s, d, pixels, src_step, sc, bi);
      default: break;
    }
#endif
    if (C > 4) {
      switch (C % 4) {
        case 0: return ToImageSlices<0>(s, d, pixels, src_step, full, slice, sc, bi);
        case 1: return ToImageSlices<1>(s, d, pixels, src_step, full, slice, sc, bi);
        case 2: return ToImageSlices<2>(s, d, pixels, src_step, full, slice, sc, bi);
        default: return ToImageSlices<3>(s, d, pixels, src_step, full, slice, sc, bi);
      }
    }
    switch (C % 4) {
      case 0: return ToImageT<0>(s, d, pixels, src_step, full, slice, sc, bi);
      case 1: return ToImageT<1>(s, d, pixels, src_step, full, slice, sc, bi);
      case 2: return ToImageT<2>(s, d, pixels, src_step, full, slice, sc, bi);
      default: return ToImageT<3>(s, d, pixels, src_step, full, slice, sc, bi);
    }
  }

  // Image -> packed pixels, pixel by pixel (the pixel's channels written once, in order).
  template <int kTail>
  static void FromImageT(const S* __restrict s, D* __restrict d, int64_t pixels, int64_t dst_step,
                         int64_t full, int64_t slice, const float* sc, const float* bi) {
    for (int64_t p = 0; p < pixels; ++p) {
      const S* __restrict in = s + p * 4;
      D* __restrict out = d + p * dst_step;
      for (int64_t s4 = 0; s4 < full; ++s4) {
        for (int k = 0; k < 4; ++k) out[s4 * 4 + k] = Cvt(in[s4 * slice + k], sc[s4 * 4 + k], bi[s4 * 4 + k]);
      }
      for (int k = 0; k < kTail; ++k) {
        out[full * 4 + k] = Cvt(in[full * slice + k], sc[full * 4 + k], bi[full * 4 + k]);
      }
    }
  }

  // Image -> packed pixels, slice by slice (many channels).
  template <int kTail>
  static void FromImageSlices(const S* __restrict s, D* __restrict d, int64_t pixels, int64_t dst_step,
                              int64_t full, int64_t slice, const float* sc, const float* bi) {
    for (int64_t s4 = 0; s4 < full; ++s4) {
      const S* __restrict in = s + s4 * slice;
      D* __restrict out = d + s4 * 4;
      const float* ss = sc + s4 * 4;
      const float* bb = bi + s4 * 4;
      for (int64_t p = 0; p < pixels; ++p) {
        for (int k = 0; k < 4; ++k) out[p * dst_step + k] = Cvt(in[p * 4 + k], ss[k], bb[k]);
      }
    }
    const S* __restrict in = s + full * slice;
    D* __restrict out = d + full * 4;
    for (int64_t p = 0; p < pixels; ++p) {
      for (int k = 0; k < kTail; ++k) out[p * dst_step + k] = Cvt(in[p * 4 + k], sc[full * 4 + k], bi[full * 4 + k]);
    }
  }

  static void FromImage(const S* s, D* d, int64_t pixels, int64_t dst_step, int64_t C, int64_t slice,
                        const float* sc, const float* bi) {
    const int64_t full = C / 4;
#if defined(TFMPS_CONVERT_AVX2)
    switch (C) {
      case 1: return FromImage4<1>(s, d, pixels, dst_step, sc, bi);
      case 2: return FromImage4<2>(s, d, pixels, dst_step, sc, bi);
      case 3: return FromImage4<3>(s, d, pixels, dst_step, sc, bi);
      case 4: return FromImage4<4>(s, d, pixels, dst_step, sc, bi);
      default: break;
    }
#endif
    if (C > 4) {
      switch (C % 4) {
        case 0: return FromImageSlices<0>(s, d, pixels, dst_step, full, slice, sc, bi);
        case 1: return FromImageSlices<1>(s, d, pixels, dst_step, full, slice, sc, bi);
        case 2: return FromImageSlices<2>(s, d, pixels, dst_step, full, slice, sc, bi);
        default: return FromImageSlices<3>(s, d, pixels, dst_step, full, slice, sc, bi);
      }
    }
    switch (C % 4) {
      case 0: return FromImageT<0>(s, d, pixels, dst_step, full, slice, sc, bi);
      case 1: return FromImageT<1>(s, d, pixels, dst_step, full, slice, sc, bi);
      case 2: return FromImageT<2>(s, d, pixels, dst_step, full, slice, sc, bi);
      default: return FromImageT<3>(s, d, pixels, dst_step, full, slice, sc, bi);
    }
  }

  // Anything else (CHW on either side): a transpose, done in tiles of 16 pixels x 8
  // channels. CHW planes are often a power of two apart (H*W = 1024 floats: 4 KB), so
  // their lines share one L1 set: 8 channels per tile stay within 8-way associativity,
  // and 16 pixels fill whole 64-byte lines.
  static void Strided(const S* s, D* d, int64_t pixels, int64_t C, const Strides& ss, int64_t s_step,
                      const Strides& ds, int64_t d_step, const float* sc, const float* bi) {
    constexpr int64_t kPixels = 16, kChannels = 8;
    for (int64_t p0 = 0; p0 < pixels; p0 += kPixels) {
      const int64_t p1 = p0 + kPixels < pixels ? p0 + kPixels : pixels;
      for (int64_t c0 = 0; c0 < C; c0 += kChannels) {
        const int64_t c1 = c0 + kChannels < C ? c0 + kChannels : C;
        for (int64_t c = c0; c < c1; ++c) {
          const S* __restrict in = s + ss.Channel(c);
          D* __restrict out = d + ds.Channel(c);
          for (int64_t p = p0; p < p1; ++p) out[p * d_step] = Cvt(in[p * s_step], sc[c], bi[c]);
        }
      }
    }
  }
};

template <typename S, typename D, bool kAffine, bool kInverse>
void ConvertTyped(const ConvertArgs& a, const ParallelFor& parallel) {
  using K = Kernels<S, D, kAffine, kInverse>;
  const Geometry& g = a.geometry;
  const S* src = static_cast<const S*>(a.src);
  D* dst = static_cast<D*>(a.dst);
  const Strides ss = StridesOf(a.src_layout, g), ds = StridesOf(a.dst_layout, g);
  const int64_t C = g.c, S4 = g.slices() * 4, P = g.h * g.w;
  const int64_t s_step = PixelStride(ss, g), d_step = PixelStride(ds, g);
  if (P == 0 || C == 0) return;

  // Work units: an item n and a block of its pixels.
  const bool packed_both = ss.packed() && ds.packed();
  const int64_t block =
      std::min<int64_t>(P, packed_both ? std::max<int64_t>(16, kFlatElements / C) : kBlockPixels);
  const int64_t blocks_per_item = (P + block - 1) / block;

  // Per-channel scale and bias, padded to whole slices; for contiguous runs, expanded
  // to the longest run.
  std::vector<float> scale(S4, 1.0f), bias(S4, 0.0f);
  if (a.scale != nullptr) std::copy(a.scale, a.scale + C, scale.begin());
  if (a.bias != nullptr) std::copy(a.bias, a.bias + C, bias.begin());
  const bool packed = packed_both;
  const bool contiguous = packed && s_step == C && d_step == C;  // whole block is one run
  std::vector<float> run_scale, run_bias;
  if (packed && kAffine) {
    const int64_t run = contiguous ? block * C : C;
    run_scale.resize(run);
    run_bias.resize(run);
    for (int64_t i = 0; i < run; ++i) run_scale[i] = scale[i % C], run_bias[i] = bias[i % C];
  }
  const bool dst_image = a.dst_layout == Layout::kImage, src_image = a.src_layout == Layout::kImage;
  // A pure float32 transpose between a packed layout (one pixel every C elements) and
  // a CHW matrix, sizes within BLAS's int range.
  const bool plain_transpose =
      std::is_same<S, float>::value && std::is_same<D, float>::value && !kAffine &&
      ((ss.packed() && s_step == C && a.dst_layout == Layout::kMatrixChw) ||
       (ds.packed() && d_step == C && a.src_layout == Layout::kMatrixChw)) &&
      P <= INT32_MAX && C <= INT32_MAX;

  if (packed && !contiguous) {
    // sequence <-> time-major: a transpose of [N, T] whose elements are rows of C
    // channels. Tiles of 16 x 16 rows keep runs of 16 rows contiguous on both sides.
    constexpr int64_t kTile = 16;
    const int64_t n_tiles = (g.n + kTile - 1) / kTile, p_tiles = (P + kTile - 1) / kTile;
    parallel(n_tiles * p_tiles, kTile * kTile * C * 3, [&](int64_t first, int64_t last) {
      for (int64_t u = first; u < last; ++u) {
        const int64_t n0 = (u / p_tiles) * kTile, p0 = (u % p_tiles) * kTile;
        const int64_t n1 = std::min(n0 + kTile, g.n), p1 = std::min(p0 + kTile, P);
        for (int64_t p = p0; p < p1; ++p) {
          for (int64_t n = n0; n < n1; ++n) {
            K::Flat(src + n * ss.n + p * s_step, dst + n * ds.n + p * d_step, C, run_scale.data(), run_bias.data());
          }
        }
      }
    });
    return;
  }

  parallel(g.n * blocks_per_item, block * S4 * 3, [&](int64_t first, int64_t last) {
    for (int64_t u = first; u < last; ++u) {
      const int64_t n = u / blocks_per_item, p0 = (u % blocks_per_item) * block;
      const int64_t pixels = std::min(block, P - p0);
      const S* s = src + n * ss.n + p0 * s_step;
      D* d = dst + n * ds.n + p0 * d_step;
      if (contiguous) {
        K::Flat(s, d, pixels * C, run_scale.data(), run_bias.data());
      } else if (dst_image && ss.packed()) {
        K::ToImage(s, d, pixels, s_step, C, ds.slice, scale.data(), bias.data());
      } else if (src_image && ds.packed()) {
        K::FromImage(s, d, pixels, d_step, C, ss.slice, scale.data(), bias.data());
      } else if (plain_transpose &&
                 blas::Transpose(ds.packed() ? static_cast<int>(C) : static_cast<int>(pixels),
                                 ds.packed() ? static_cast<int>(pixels) : static_cast<int>(C),
                                 reinterpret_cast<const float*>(s), static_cast<int>(ss.packed() ? C : P),
                                 reinterpret_cast<float*>(d), static_cast<int>(ds.packed() ? C : P))) {
        // float32 CHW <-> packed, no affine: BLAS's tuned out-of-place transpose.
      } else {
        K::Strided(s, d, pixels, C, ss, s_step, ds, d_step, scale.data(), bias.data());
        for (int64_t c = C; dst_image && c < S4; ++c) {  // the image's padding channels
          D* out = d + ds.Channel(c);
          for (int64_t p = 0; p < pixels; ++p) out[p * 4] = D(0);
        }
      }
    }
  });
}

template <typename S, typename D>
void WithAffine(const ConvertArgs& a, const ParallelFor& parallel) {
  const bool affine = a.scale != nullptr || a.bias != nullptr;
  if (!affine) return ConvertTyped<S, D, false, false>(a, parallel);
  if (a.affine == Affine::kInverse) return ConvertTyped<S, D, true, true>(a, parallel);
  ConvertTyped<S, D, true, false>(a, parallel);
}

template <typename S>
void WithDst(const ConvertArgs& a, const ParallelFor& parallel) {
  switch (a.dst_type) {
    case DType::kUint8: return WithAffine<S, uint8_t>(a, parallel);
    case DType::kFloat16: return WithAffine<S, Half>(a, parallel);
    case DType::kFloat32: return WithAffine<S, float>(a, parallel);
  }
}

}  // namespace

void ConvertCpuImpl(const ConvertArgs& a, const ParallelFor& parallel) {
  switch (a.src_type) {
    case DType::kUint8: return WithDst<uint8_t>(a, parallel);
    case DType::kFloat16: return WithDst<Half>(a, parallel);
    case DType::kFloat32: return WithDst<float>(a, parallel);
  }
}
}  // namespace TFMPS_CONVERT_ISA

#if !defined(TFMPS_CONVERT_AVX2)
#if defined(TFMPS_HAVE_CONVERT_AVX2)
namespace isa_avx2 {
void ConvertCpuImpl(const ConvertArgs& a, const ParallelFor& parallel);
}
#endif

void ConvertCpu(const ConvertArgs& a, const ParallelFor& parallel) {
#if defined(TFMPS_HAVE_CONVERT_AVX2)
  // TFMPS_CONVERT_ISA=base forces the portable build (the tests run both).
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  const char* isa = std::getenv("TFMPS_CONVERT_ISA");
  if (avx2 && !(isa != nullptr && std::strcmp(isa, "base") == 0)) return isa_avx2::ConvertCpuImpl(a, parallel);
#endif
  isa_base::ConvertCpuImpl(a, parallel);
}
#endif

}  // namespace convert
}  // namespace tfmps
