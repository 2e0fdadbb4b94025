// CPU backend of the convert family. Work is split by rows (n, h); inside a row, a
// layout pair whose pixels are both channel-packed (NHWC, sequence, time-major, HWC
// matrix) is one contiguous run; any other pair (an image or a CHW matrix on either
// side) becomes one strided run per channel. Both kinds of loop vectorize: the value
// conversions below are branch-free.
//
// Built with -ffp-contract=off: x*scale + bias is two roundings, as on every backend.
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops/convert/convert.h"

namespace tfmps {
namespace convert {

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
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t shifted = static_cast<uint32_t>(h & 0x7fffu) << 13;
  const uint32_t exponent = shifted & 0x0f800000u;
  const uint32_t normal = shifted + 0x38000000u;   // + (127 - 15) << 23
  const uint32_t special = shifted + 0x70000000u;  // exponent 31 -> 255
  const float subnormal = BitCast<float>(normal + 0x00800000u) - 0x1p-14f;
  const uint32_t bits = exponent == 0x0f800000u ? special
                        : exponent == 0          ? BitCast<uint32_t>(subnormal)
                                                 : normal;
  return BitCast<float>(bits | sign);
}

// binary32 -> binary16, round to nearest even (as float16 casts in TF, NumPy and Metal).
inline Half FloatToHalf(float f) {
  uint32_t bits = BitCast<uint32_t>(f);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  bits &= 0x7fffffffu;
  uint32_t out;
  if (bits >= 0x47800000u) {  // too large for half (or Inf/NaN)
    out = bits > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (bits < 0x38800000u) {  // result is subnormal or zero
    // Adding 0.5 aligns the mantissa so the FPU rounds (to nearest even) at half's
    // subnormal precision; the low bits are then the half's bits.
    out = BitCast<uint32_t>(BitCast<float>(bits) + 0.5f) - BitCast<uint32_t>(0.5f);
  } else {
    const uint32_t odd = (bits >> 13) & 1u;
    bits += 0xc8000fffu + odd;  // rebias exponent (15 - 127) << 23, round half to even
    out = bits >> 13;
  }
  return static_cast<Half>(out | sign);
}

// unorm8: q / 255, and back with round-to-nearest-even of clamp(y, 0, 1) * 255. The
// magic constant 2^23 makes the FPU round a value in [0, 255] to an integer.
inline float Unorm8ToFloat(uint8_t q) { return static_cast<float>(q) / 255.0f; }
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
  static float Load(Half x) { return HalfToFloat(x); }
  static Half Store(float y) { return FloatToHalf(y); }
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

// ------------------------------------------------------------ layout walking
// Per layout: where row (n, h) starts, the step between consecutive w, and the offset
// of channel c inside a pixel (the index maps of convert.h, split this way).
struct RowMap {
  Layout layout;
  Geometry g;
  int64_t RowBase(int64_t n, int64_t h) const { return Offset(layout, g, n, h, 0, 0); }
  int64_t WStep() const {
    switch (layout) {
      case Layout::kImage: return 4;
      case Layout::kMatrixChw: return 1;
      default: return g.c;
    }
  }
  int64_t ChannelOffset(int64_t c) const { return Offset(layout, g, 0, 0, 0, c); }
  // Channels of one pixel are contiguous and one pixel follows another.
  bool Packed() const { return layout != Layout::kImage && layout != Layout::kMatrixChw; }
};

template <typename S, typename D, bool kAffine, bool kInverse>
void ConvertTyped(const ConvertArgs& a, const ParallelFor& parallel) {
  const Geometry& g = a.geometry;
  const S* src = static_cast<const S*>(a.src);
  D* dst = static_cast<D*>(a.dst);
  const RowMap sm{a.src_layout, g}, dm{a.dst_layout, g};
  const int64_t C = g.c, W = g.w;
  const bool dst_image = a.dst_layout == Layout::kImage;
  const int64_t dst_channels = dst_image ? g.slices() * 4 : C;  // padding included

  std::vector<float> scale(C, 1.0f), bias(C, 0.0f);
  if (a.scale != nullptr) scale.assign(a.scale, a.scale + C);
  if (a.bias != nullptr) bias.assign(a.bias, a.bias + C);

  if (sm.Packed() && dm.Packed()) {
    // A row is W*C contiguous elements on both sides: one flat loop, the per-channel
    // affine expanded to the row's length once.
    const int64_t row = W * C;
    std::vector<float> row_scale(kAffine ? row : 0), row_bias(kAffine ? row : 0);
    for (int64_t i = 0; kAffine && i < row; ++i) {
      row_scale[i] = scale[i % C];
      row_bias[i] = bias[i % C];
    }
    parallel(g.n * g.h, row * 4, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const int64_t n = r / g.h, h = r % g.h;
        const S* __restrict s = src + sm.RowBase(n, h);
        D* __restrict d = dst + dm.RowBase(n, h);
        const float* __restrict rs = row_scale.data();
        const float* __restrict rb = row_bias.data();
        for (int64_t i = 0; i < row; ++i) {
          d[i] = Convert<S, D, kAffine, kInverse>(s[i], kAffine ? rs[i] : 1.0f, kAffine ? rb[i] : 0.0f);
        }
      }
    });
    return;
  }

  // General case: one strided run of W elements per channel of a row.
  const int64_t s_step = sm.WStep(), d_step = dm.WStep();
  std::vector<int64_t> s_off(C), d_off(dst_channels);
  for (int64_t c = 0; c < C; ++c) s_off[c] = sm.ChannelOffset(c);
  for (int64_t c = 0; c < dst_channels; ++c) d_off[c] = dm.ChannelOffset(c);
  parallel(g.n * g.h, W * dst_channels * 4, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const int64_t n = r / g.h, h = r % g.h;
      const S* s_row = src + sm.RowBase(n, h);
      D* d_row = dst + dm.RowBase(n, h);
      for (int64_t c = 0; c < C; ++c) {
        const S* __restrict s = s_row + s_off[c];
        D* __restrict d = d_row + d_off[c];
        const float sc = scale[c], bi = bias[c];
        for (int64_t w = 0; w < W; ++w) {
          d[w * d_step] = Convert<S, D, kAffine, kInverse>(s[w * s_step], sc, bi);
        }
      }
      for (int64_t c = C; c < dst_channels; ++c) {  // the image's padding channels
        D* __restrict d = d_row + d_off[c];
        for (int64_t w = 0; w < W; ++w) d[w * d_step] = D(0);
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

void ConvertCpu(const ConvertArgs& a, const ParallelFor& parallel) {
  switch (a.src_type) {
    case DType::kUint8: return WithDst<uint8_t>(a, parallel);
    case DType::kFloat16: return WithDst<Half>(a, parallel);
    case DType::kFloat32: return WithDst<float>(a, parallel);
  }
}

}  // namespace convert
}  // namespace tfmps
