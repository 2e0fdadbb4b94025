// Conv2D geometry (conv.h): output sizes and padding from SAME/VALID/EXPLICIT, computed
// once for the glue and every backend, with every sum and product checked for overflow.
#include <climits>
#include <cstdint>
#include <string>

#include "ops/conv/conv.h"

namespace tfmps {
namespace conv {
namespace {

bool Add(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }
bool Mul(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

std::string Str(int64_t v) { return std::to_string(v); }

}  // namespace

std::string ComputeOutputSize(const char* dim, int64_t in, int64_t k, int64_t stride, int64_t dilation,
                              Padding padding, int64_t explicit_before, int64_t explicit_after, int64_t* before,
                              int64_t* after, int64_t* out) {
  if (in < 1 || k < 1 || stride < 1 || dilation < 1 || explicit_before < 0 || explicit_after < 0) {
    return std::string("the input ") + dim + " (" + Str(in) + "), filter " + dim + " (" + Str(k) + "), stride (" +
           Str(stride) + ") and dilation (" + Str(dilation) + ") must be >= 1 and the paddings >= 0";
  }
  int64_t eff = 0;
  if (!Mul(k - 1, dilation, &eff) || !Add(eff, 1, &eff)) {
    return std::string("dilations: the dilated filter ") + dim + " (" + Str(k) + "-1)*" + Str(dilation) +
           "+1 overflows int64";
  }
  if (padding == Padding::kSame) {
    *out = (in - 1) / stride + 1;  // ceil(in / stride) without overflow, in >= 1
    int64_t span = 0;
    if (!Mul(*out - 1, stride, &span) || !Add(span, eff, &span)) {
      return std::string("strides/dilations: the input ") + dim +
             " the SAME output covers ((out-1)*stride + dilated filter) overflows int64";
    }
    const int64_t total = span > in ? span - in : 0;
    *before = total / 2;
    *after = total - *before;
    return "";
  }
  *before = padding == Padding::kExplicit ? explicit_before : 0;
  *after = padding == Padding::kExplicit ? explicit_after : 0;
  int64_t padded = 0;
  if (!Add(in, *before, &padded) || !Add(padded, *after, &padded)) {
    return std::string("explicit_paddings: the padded input ") + dim + " overflows int64";
  }
  if (padded < eff) {
    return std::string("the filter is larger than the padded input: dilated filter ") + dim + " " + Str(eff) +
           " ((" + Str(k) + "-1)*" + Str(dilation) + "+1) > input " + dim + " " + Str(in) + " + padding " +
           Str(*before) + "+" + Str(*after);
  }
  *out = (padded - eff) / stride + 1;
  return "";
}

std::string ComputeGeometry(const Conv2DSpec& s, Conv2DGeometry* g) {
  if (s.batch < 0 || s.in_h <= 0 || s.in_w <= 0 || s.in_c <= 0) {
    return "input must have a batch >= 0 and positive height, width and channels, got [" + Str(s.batch) + "," +
           Str(s.in_h) + "," + Str(s.in_w) + "," + Str(s.in_c) + "]";
  }
  if (s.k_h <= 0 || s.k_w <= 0 || s.filter_in_c <= 0 || s.out_c <= 0) {
    return "filter must have positive dimensions [filter_height, filter_width, in_channels / groups, "
           "out_channels], got [" + Str(s.k_h) + "," + Str(s.k_w) + "," + Str(s.filter_in_c) + "," +
           Str(s.out_c) + "]";
  }
  if (s.in_c % s.filter_in_c != 0) {
    return "input depth must be evenly divisible by filter depth: " + Str(s.in_c) + " vs " + Str(s.filter_in_c) +
           " (input channels vs the filter's third dimension, in_channels / groups)";
  }
  const int64_t groups = s.in_c / s.filter_in_c;
  if (s.out_c % groups != 0) {
    return "the filter's output channels (" + Str(s.out_c) + ") must be divisible by the number of groups (" +
           Str(groups) + " = input depth " + Str(s.in_c) + " / filter depth " + Str(s.filter_in_c) + ")";
  }
  if (s.stride_h < 1 || s.stride_w < 1) {
    return "strides must be >= 1, got height " + Str(s.stride_h) + ", width " + Str(s.stride_w);
  }
  if (s.dilation_h < 1 || s.dilation_w < 1) {
    return "dilations must be >= 1, got height " + Str(s.dilation_h) + ", width " + Str(s.dilation_w);
  }
  if (s.padding == Padding::kExplicit) {
    for (int i = 0; i < 4; ++i) {
      if (s.explicit_pads[i] < 0) {
        return "explicit_paddings must be >= 0, got " + Str(s.explicit_pads[i]);
      }
    }
  }
  Conv2DGeometry out{};
  out.batch = s.batch;
  out.in_h = s.in_h;
  out.in_w = s.in_w;
  out.in_c = s.in_c;
  out.k_h = s.k_h;
  out.k_w = s.k_w;
  out.out_c = s.out_c;
  out.groups = groups;
  out.in_c_per_group = s.filter_in_c;
  out.out_c_per_group = s.out_c / groups;
  out.stride_h = s.stride_h;
  out.stride_w = s.stride_w;
  out.dilation_h = s.dilation_h;
  out.dilation_w = s.dilation_w;
  std::string err = ComputeOutputSize("height", s.in_h, s.k_h, s.stride_h, s.dilation_h, s.padding, s.explicit_pads[0],
                              s.explicit_pads[1], &out.pad_top, &out.pad_bottom, &out.out_h);
  if (!err.empty()) return err;
  err = ComputeOutputSize("width", s.in_w, s.k_w, s.stride_w, s.dilation_w, s.padding, s.explicit_pads[2],
                  s.explicit_pads[3], &out.pad_left, &out.pad_right, &out.out_w);
  if (!err.empty()) return err;

  // The output tensor, and the sizes BLAS indexes with int (patch rows, channel counts).
  int64_t elements = 0;
  if (!Mul(s.batch, out.out_h, &elements) || !Mul(elements, out.out_w, &elements) ||
      !Mul(elements, s.out_c, &elements)) {
    return "the output [" + Str(s.batch) + "," + Str(out.out_h) + "," + Str(out.out_w) + "," + Str(s.out_c) +
           "] has more elements than int64 can count";
  }
  int64_t patch = 0, patch_t = 0, filter = 0;
  if (!Mul(s.k_h, s.k_w, &patch) || !Mul(patch, s.filter_in_c, &patch_t) || !Mul(patch_t, s.out_c, &filter) ||
      !Mul(patch, out.out_c_per_group, &patch)) {
    return "the filter has more elements than int64 can count";
  }
  if (patch_t > INT_MAX || patch > INT_MAX || s.in_c > INT_MAX || s.out_c > INT_MAX) {
    return "the filter is too large for BLAS's 32-bit sizes: filter_height * filter_width * channels per group "
           "must be < 2^31";
  }
  *g = out;
  return "";
}

}  // namespace conv
}  // namespace tfmps
