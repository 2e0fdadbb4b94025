// TensorFlow glue of the conv family: op definitions with shape functions, validation
// of every input and attribute, and dispatch to the backends declared in conv.h.
//
//   MpsConv2D(input [N,H,W,C], filter [KH,KW,C/G,O], bias: 0 or 1 x [O]) -> [N,OH,OW,O]
//   MpsConv2DBackpropInput(input_sizes (4 x int32), filter, out_backprop) -> [N,H,W,C]
//   MpsConv2DBackpropFilter(input, filter_sizes (4 x int32), out_backprop)
//       -> filter_backprop [KH,KW,C/G,O], bias_backprop: num_bias x [O]
//   MpsConv2DTranspose(input [N,OH,OW,O], filter [KH,KW,C/G,O] (tf.nn.conv2d_transpose's
//       [h, w, out, in]), output_shape (4 x int32) = [N,H,W,C], bias: 0 or 1 x [C])
//       -> act(MpsConv2DBackpropInput(output_shape, filter, input) + bias) [N,H,W,C]
//
// Attributes follow tf.nn.conv2d's raw op (Conv2D): strides and dilations are 4-element
// NHWC lists whose batch and depth entries are 1; padding SAME/VALID/EXPLICIT with
// explicit_paddings as 8 values (before/after per NHWC dimension, batch and depth 0).
// The groups count is the shapes': G = C / filter's third dimension (TF's rule).
// activation ("none"/"relu") is fused into the forward and transposed ops; its gradient
// is applied to out_backprop by the caller (tf_mps/ops/conv.py). T is float32 or float16;
// accumulator_precision "float32" computes in float32 and rounds once, "float16" runs the
// exact half-accumulation model of conv.h (float32 data rounded to half first).
#include <functional>
#include <string>
#include <vector>

#include "ops/common/tf_glue.h"
#include "ops/conv/conv.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#ifdef TFMPS_DEVICE_KERNELS
#include "ops/conv/conv_metal.h"
#include "ops/device/device_kernels_glue.h"
#endif

namespace tfmps {
namespace conv {
namespace {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

constexpr char kAttrT[] = "T: {half, float}";
constexpr char kAttrStrides[] = "strides: list(int)";
constexpr char kAttrDilations[] = "dilations: list(int) = [1, 1, 1, 1]";
constexpr char kAttrPadding[] = "padding: {'SAME', 'VALID', 'EXPLICIT'}";
constexpr char kAttrExplicit[] = "explicit_paddings: list(int) = []";
constexpr char kAttrAccumulator[] = "accumulator_precision: {'float32', 'float16'} = 'float32'";

// Named inputs.
enum ForwardInput { kFwdInput, kFwdFilter, kFwdBias };
enum InputGradInput { kBinSizes, kBinFilter, kBinOutBackprop };
enum FilterGradInput { kBfInput, kBfSizes, kBfOutBackprop };
enum TransposeInput { kTrInput, kTrFilter, kTrOutputShape, kTrBias };

const char kInputLayout[] = "[batch, height, width, channels] (NHWC)";
const char kFilterLayout[] = "[filter_height, filter_width, in_channels / groups, out_channels] (HWIO)";
const char kTransposeFilterLayout[] =
    "[filter_height, filter_width, out_channels / groups, in_channels] (tf.nn.conv2d_transpose's)";

// The attributes every conv op shares, read and validated once.
struct ConvAttrs {
  int64_t stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  Padding padding = Padding::kValid;
  int64_t pads[4] = {0, 0, 0, 0};  // top, bottom, left, right
  bool float16_accumulation = false;
};

std::string ListString(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) absl::StrAppend(&out, i ? ", " : "", v[i]);
  return out + "]";
}

// A 4-element NHWC list of strides or dilations: batch and depth 1, the others >= 1.
absl::Status NhwcList(const std::string& op, const char* name, const std::vector<int64_t>& v, int64_t* h,
                      int64_t* w) {
  if (v.size() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must have 4 elements [1, ", name,
                                                   "_height, ", name, "_width, 1] (NHWC), got ", v.size(), ": ",
                                                   ListString(v)));
  }
  if (v[0] != 1 || v[3] != 1) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name,
                                                   " in the batch and depth dimensions must be 1 (as in "
                                                   "tf.nn.conv2d), got ",
                                                   ListString(v)));
  }
  if (v[1] < 1 || v[2] < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must be >= 1 in height and width, got ", ListString(v)));
  }
  *h = v[1];
  *w = v[2];
  return absl::OkStatus();
}

template <typename Ctx>
absl::Status ReadAttrs(Ctx* c, const std::string& op, ConvAttrs* a) {
  std::vector<int64_t> strides, dilations, explicit_paddings;
  std::string padding, accumulator;
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("dilations", &dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  TF_RETURN_IF_ERROR(c->GetAttr("explicit_paddings", &explicit_paddings));
  TF_RETURN_IF_ERROR(c->GetAttr("accumulator_precision", &accumulator));
  TF_RETURN_IF_ERROR(NhwcList(op, "strides", strides, &a->stride_h, &a->stride_w));
  TF_RETURN_IF_ERROR(NhwcList(op, "dilations", dilations, &a->dilation_h, &a->dilation_w));
  a->padding = padding == "SAME" ? Padding::kSame : padding == "VALID" ? Padding::kValid : Padding::kExplicit;
  if (a->padding == Padding::kExplicit) {
    if (explicit_paddings.size() != 8) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": explicit_paddings must have 8 elements (before and after for each NHWC dimension) when padding "
              "is EXPLICIT, got ",
          explicit_paddings.size(), ": ", ListString(explicit_paddings)));
    }
    if (explicit_paddings[0] != 0 || explicit_paddings[1] != 0 || explicit_paddings[6] != 0 ||
        explicit_paddings[7] != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": explicit_paddings in the batch and depth dimensions must be 0, got ", ListString(explicit_paddings)));
    }
    for (int i = 2; i < 6; ++i) {
      if (explicit_paddings[i] < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(op, ": explicit_paddings must be >= 0, got ", ListString(explicit_paddings)));
      }
      a->pads[i - 2] = explicit_paddings[i];
    }
  } else if (!explicit_paddings.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": explicit_paddings must be empty unless padding is EXPLICIT (",
                                                   padding, " given), got ", ListString(explicit_paddings)));
  }
  a->float16_accumulation = accumulator == "float16";
  return absl::OkStatus();
}

Conv2DSpec MakeSpec(const ConvAttrs& a, const int64_t in[4], const int64_t f[4]) {
  Conv2DSpec s;
  s.batch = in[0];
  s.in_h = in[1];
  s.in_w = in[2];
  s.in_c = in[3];
  s.k_h = f[0];
  s.k_w = f[1];
  s.filter_in_c = f[2];
  s.out_c = f[3];
  s.stride_h = a.stride_h;
  s.stride_w = a.stride_w;
  s.dilation_h = a.dilation_h;
  s.dilation_w = a.dilation_w;
  s.padding = a.padding;
  for (int i = 0; i < 4; ++i) s.explicit_pads[i] = a.pads[i];
  return s;
}

std::string DimsString(const int64_t d[4]) { return ListString({d[0], d[1], d[2], d[3]}); }

// ---------------------------------------------------------------- shape functions
// Rank check with the kernel's message.
absl::Status RequireRank(InferenceContext* c, int index, int rank, const std::string& op, const char* name,
                         const char* layout, ShapeHandle* out) {
  ShapeHandle s = c->input(index);
  if (c->RankKnown(s) && c->Rank(s) != rank) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must be ", rank, "-D ", layout, ", got shape ",
                                                   c->DebugString(s)));
  }
  return c->WithRank(s, rank, out);
}

// The output spatial size (or unknown) of one dimension, and its error if the known
// sizes cannot be convolved.
absl::Status SpatialDim(InferenceContext* c, const std::string& op, const char* name, int64_t in, int64_t k,
                        int64_t stride, int64_t dilation, const ConvAttrs& a, int64_t before, int64_t after,
                        DimensionHandle* out) {
  if (in == InferenceContext::kUnknownDim || k == InferenceContext::kUnknownDim || in < 1 || k < 1) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  int64_t pb, pa, size;
  const std::string err = ComputeOutputSize(name, in, k, stride, dilation, a.padding, before, after, &pb, &pa, &size);
  if (!err.empty()) return absl::InvalidArgumentError(absl::StrCat(op, ": ", err));
  *out = c->MakeDim(size);
  return absl::OkStatus();
}

// The forward output shape from (possibly partly known) input and filter shapes.
absl::Status OutputShape(InferenceContext* c, const std::string& op, const ConvAttrs& a, ShapeHandle in,
                         ShapeHandle f, ShapeHandle* out) {
  const int64_t C = c->Value(c->Dim(in, 3)), fc = c->Value(c->Dim(f, 2));
  if (C != InferenceContext::kUnknownDim && fc != InferenceContext::kUnknownDim && fc > 0 && C % fc != 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": input depth must be evenly divisible by filter depth: ", C,
                                                   " vs ", fc, " (input ", c->DebugString(in), ", filter ",
                                                   c->DebugString(f), ")"));
  }
  DimensionHandle oh, ow;
  TF_RETURN_IF_ERROR(SpatialDim(c, op, "height", c->Value(c->Dim(in, 1)), c->Value(c->Dim(f, 0)), a.stride_h,
                                a.dilation_h, a, a.pads[0], a.pads[1], &oh));
  TF_RETURN_IF_ERROR(SpatialDim(c, op, "width", c->Value(c->Dim(in, 2)), c->Value(c->Dim(f, 1)), a.stride_w,
                                a.dilation_w, a, a.pads[2], a.pads[3], &ow));
  *out = c->MakeShape({c->Dim(in, 0), oh, ow, c->Dim(f, 3)});
  return absl::OkStatus();
}

absl::Status ForwardShape(InferenceContext* c) {
  const std::string op = "MpsConv2D";
  ConvAttrs a;
  TF_RETURN_IF_ERROR(ReadAttrs(c, op, &a));
  ShapeHandle in, f, out;
  TF_RETURN_IF_ERROR(RequireRank(c, kFwdInput, 4, op, "input", kInputLayout, &in));
  TF_RETURN_IF_ERROR(RequireRank(c, kFwdFilter, 4, op, "filter", kFilterLayout, &f));
  int64_t num_bias = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("num_bias", &num_bias));
  if (num_bias > 1) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": bias must be a list of 0 or 1 tensors, got ", num_bias));
  }
  TF_RETURN_IF_ERROR(OutputShape(c, op, a, in, f, &out));
  if (num_bias == 1) {
    ShapeHandle b = c->input(kFwdBias);
    DimensionHandle merged;
    if ((c->RankKnown(b) && c->Rank(b) != 1) ||
        (c->RankKnown(b) && !c->Merge(c->Dim(b, 0), c->Dim(f, 3), &merged).ok())) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": bias must be 1-D with one value per output channel "
                                                     "(the filter's last dimension), got bias ",
                                                     c->DebugString(b), " for filter ", c->DebugString(f)));
    }
  }
  c->set_output(0, out);
  return absl::OkStatus();
}

// The shape an int32 size vector input holds (4 entries), for the backprop ops' outputs.
absl::Status SizesShape(InferenceContext* c, const std::string& op, int index, const char* name,
                        ShapeHandle* out) {
  ShapeHandle sizes = c->input(index);
  if (c->RankKnown(sizes) && (c->Rank(sizes) != 1 || (c->ValueKnown(c->Dim(sizes, 0)) &&
                                                      c->Value(c->Dim(sizes, 0)) != 4))) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must be a 1-D tensor of 4 elements, got shape ",
                                                   c->DebugString(sizes)));
  }
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(index, out));
  return c->WithRank(*out, 4, out);
}

absl::Status BackpropInputShape(InferenceContext* c) {
  const std::string op = "MpsConv2DBackpropInput";
  ConvAttrs a;
  TF_RETURN_IF_ERROR(ReadAttrs(c, op, &a));
  ShapeHandle in, f, dy;
  TF_RETURN_IF_ERROR(SizesShape(c, op, kBinSizes, "input_sizes", &in));
  TF_RETURN_IF_ERROR(RequireRank(c, kBinFilter, 4, op, "filter", kFilterLayout, &f));
  TF_RETURN_IF_ERROR(RequireRank(c, kBinOutBackprop, 4, op, "out_backprop", kInputLayout, &dy));
  c->set_output(0, in);
  return absl::OkStatus();
}

absl::Status BackpropFilterShape(InferenceContext* c) {
  const std::string op = "MpsConv2DBackpropFilter";
  ConvAttrs a;
  TF_RETURN_IF_ERROR(ReadAttrs(c, op, &a));
  int64_t num_bias = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("num_bias", &num_bias));
  if (num_bias > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": num_bias must be 0 or 1 (one bias gradient or none), got ", num_bias));
  }
  ShapeHandle in, f, dy;
  TF_RETURN_IF_ERROR(RequireRank(c, kBfInput, 4, op, "input", kInputLayout, &in));
  TF_RETURN_IF_ERROR(SizesShape(c, op, kBfSizes, "filter_sizes", &f));
  TF_RETURN_IF_ERROR(RequireRank(c, kBfOutBackprop, 4, op, "out_backprop", kInputLayout, &dy));
  c->set_output(0, f);
  if (num_bias == 1) c->set_output(1, c->Vector(c->Dim(f, 3)));
  return absl::OkStatus();
}

absl::Status TransposeShape(InferenceContext* c) {
  const std::string op = "MpsConv2DTranspose";
  ConvAttrs a;
  TF_RETURN_IF_ERROR(ReadAttrs(c, op, &a));
  int64_t num_bias = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("num_bias", &num_bias));
  if (num_bias > 1) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": bias must be a list of 0 or 1 tensors, got ", num_bias));
  }
  ShapeHandle x, f, out, expected;
  TF_RETURN_IF_ERROR(RequireRank(c, kTrInput, 4, op, "input", kInputLayout, &x));
  TF_RETURN_IF_ERROR(RequireRank(c, kTrFilter, 4, op, "filter", kTransposeFilterLayout, &f));
  TF_RETURN_IF_ERROR(SizesShape(c, op, kTrOutputShape, "output_shape", &out));
  // The convolution of an output_shape image by the filter must give the input's shape.
  TF_RETURN_IF_ERROR(OutputShape(c, op, a, out, f, &expected));
  ShapeHandle merged;
  if (!c->Merge(x, expected, &merged).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": input must have the shape that convolving an image of output_shape ", c->DebugString(out),
        " with filter ", c->DebugString(f), " under these strides, dilations and padding gives, expected ",
        c->DebugString(expected), ", got ", c->DebugString(x)));
  }
  c->set_output(0, out);
  return absl::OkStatus();
}

}  // namespace

// -------------------------------------------------------------------------- ops
TFMPS_REGISTER_OP("MpsConv2D")
    .Input("input: T").Input("filter: T").Input("bias: num_bias * T")
    .Output("output: T")
    .Attr(kAttrT).Attr("num_bias: int >= 0")
    .Attr(kAttrStrides).Attr(kAttrDilations).Attr(kAttrPadding).Attr(kAttrExplicit)
    .Attr("activation: {'none', 'relu'} = 'none'").Attr(kAttrAccumulator)
    .SetShapeFn(ForwardShape)
    .Doc(R"doc(
2-D convolution in NHWC with HWIO filters, groups from the shapes (C / filter depth),
optional fused bias (a list of 0 or 1 tensors) and activation. See tf_mps.ops.conv2d.
)doc");

TFMPS_REGISTER_OP("MpsConv2DBackpropInput")
    .Input("input_sizes: int32").Input("filter: T").Input("out_backprop: T")
    .Output("output: T")
    .Attr(kAttrT)
    .Attr(kAttrStrides).Attr(kAttrDilations).Attr(kAttrPadding).Attr(kAttrExplicit).Attr(kAttrAccumulator)
    .SetShapeFn(BackpropInputShape)
    .Doc("Gradient of MpsConv2D with respect to its input (of shape input_sizes).");

TFMPS_REGISTER_OP("MpsConv2DBackpropFilter")
    .Input("input: T").Input("filter_sizes: int32").Input("out_backprop: T")
    .Output("filter_backprop: T").Output("bias_backprop: num_bias * T")
    .Attr(kAttrT).Attr("num_bias: int >= 0 = 0")
    .Attr(kAttrStrides).Attr(kAttrDilations).Attr(kAttrPadding).Attr(kAttrExplicit).Attr(kAttrAccumulator)
    .SetShapeFn(BackpropFilterShape)
    .Doc(R"doc(
Gradient of MpsConv2D with respect to its filter (of shape filter_sizes) and, when
num_bias is 1, its bias (the sum of out_backprop over batch, height and width).
)doc");

TFMPS_REGISTER_OP("MpsConv2DTranspose")
    .Input("input: T").Input("filter: T").Input("output_shape: int32").Input("bias: num_bias * T")
    .Output("output: T")
    .Attr(kAttrT).Attr("num_bias: int >= 0 = 0")
    .Attr(kAttrStrides).Attr(kAttrDilations).Attr(kAttrPadding).Attr(kAttrExplicit)
    .Attr("activation: {'none', 'relu'} = 'none'").Attr(kAttrAccumulator)
    .SetShapeFn(TransposeShape)
    .Doc(R"doc(
Transposed 2-D convolution (tf.nn.conv2d_transpose): the input gradient of the convolution
whose input has output_shape, with filter [h, w, out_channels / groups, in_channels],
plus an optional fused bias [out_channels] and activation. See tf_mps.ops.conv2d_transpose.
)doc");

// Which build of the CPU backend's vectorized code runs ("avx512", "avx2" or "base"),
// chosen once per process (TFMPS_CONV_ISA narrows it). For reports and tests.
TFMPS_REGISTER_OP("MpsConvCpuIsa")
    .Output("isa: string")
    .SetShapeFn(tensorflow::shape_inference::ScalarShape)
    .Doc("The build of the conv family's CPU kernels this process runs: avx512, avx2 or base.");

// -------------------------------------------------------------------------- kernels
namespace {

class ConvCpuIsaOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<tensorflow::tstring>()() = ConvCpuIsa();
  }
};

// A float32 view of one float input for the backends: the tensor itself (float32 data,
// float32 accumulation), its exact float32 copy (float16 data), or its values rounded to
// half (float32 data, float16 accumulation: the model's operands are halves).
struct FloatIn {
  const Tensor* src = nullptr;
  Tensor temp;
  const float* data = nullptr;
  enum class Make { kAsIs, kFromHalf, kRoundToHalf } make = Make::kAsIs;
};

// The backends' float32 result for one output: the tensor itself (float32) or a float32
// temporary rounded into the float16 tensor at the end.
struct FloatOut {
  Tensor* dst = nullptr;
  Tensor temp;
  float* data = nullptr;
  bool to_half = false;
};

// Attributes, the CPU context and the checks every conv kernel shares. One class per op
// serves float32 and float16 (the dtype is the tensors'); the backends compute in
// float32, or with the exact half-accumulation model (accumulator_precision 'float16').
class ConvKernel : public OpKernel {
 public:
  explicit ConvKernel(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, ReadAttrs(c, type_string(), &attrs_)); }

 protected:
  bool half_acc() const { return attrs_.float16_accumulation; }

  // Shapes of a rank-4 tensor input, or an error naming it.
  absl::Status Rank4(OpKernelContext* ctx, int index, const char* name, const char* layout, int64_t dims[4]) const {
    const TensorShape& s = ctx->input(index).shape();
    if (s.dims() != 4) {
      return absl::InvalidArgumentError(
          absl::StrCat(type_string(), ": ", name, " must be 4-D ", layout, ", got shape ", s.DebugString()));
    }
    for (int i = 0; i < 4; ++i) dims[i] = s.dim_size(i);
    return absl::OkStatus();
  }

  // A size vector input (input_sizes, filter_sizes, output_shape): int32, 4 entries.
  absl::Status Sizes(OpKernelContext* ctx, int index, const char* name, int64_t dims[4]) const {
    const Tensor& t = ctx->input(index);
    if (!tensorflow::TensorShapeUtils::IsVector(t.shape()) || t.NumElements() != 4) {
      return absl::InvalidArgumentError(absl::StrCat(type_string(), ": ", name,
                                                     " must be a 1-D tensor of 4 elements, got shape ",
                                                     t.shape().DebugString()));
    }
    const auto v = t.vec<int32_t>();
    for (int i = 0; i < 4; ++i) dims[i] = v(i);
    return absl::OkStatus();
  }

  absl::Status Geometry(const int64_t in[4], const int64_t f[4], const char* in_name, const char* f_name,
                        Conv2DGeometry* g) const {
    const std::string err = ComputeGeometry(MakeSpec(attrs_, in, f), g);
    if (err.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(type_string(), ": ", err, " (", in_name, " ", DimsString(in),
                                                   ", ", f_name, " ", DimsString(f), ")"));
  }

  // out_backprop must be the forward output's shape.
  absl::Status CheckOutBackprop(OpKernelContext* ctx, int index, const Conv2DGeometry& g, const char* in_name,
                                const int64_t in[4], const int64_t f[4]) const {
    const TensorShape expected({g.batch, g.out_h, g.out_w, g.out_c});
    const TensorShape& got = ctx->input(index).shape();
    if (got == expected) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        type_string(), ": out_backprop must have the shape of the convolution's output, ", expected.DebugString(),
        " for ", in_name, " ", DimsString(in), " and filter ", DimsString(f),
        " under these strides, dilations and padding; got ", got.DebugString()));
  }

  // Prepares the float32 view of input `index` (rounded to half under half accumulation
  // when `operand`: the bias is added in float32 and keeps its value).
  absl::Status In(OpKernelContext* ctx, int index, bool operand, FloatIn* in) const {
    const Tensor& t = ctx->input(index);
    in->src = &t;
    if (t.dtype() == tensorflow::DT_FLOAT && !(operand && half_acc())) {
      in->data = t.flat<float>().data();
      return absl::OkStatus();
    }
    in->make = t.dtype() == tensorflow::DT_HALF ? FloatIn::Make::kFromHalf : FloatIn::Make::kRoundToHalf;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_FLOAT, t.shape(), &in->temp));
    in->data = in->temp.flat<float>().data();
    return absl::OkStatus();
  }

  absl::Status Out(OpKernelContext* ctx, int index, const TensorShape& shape, FloatOut* out) const {
    TF_RETURN_IF_ERROR(ctx->allocate_output(index, shape, &out->dst));
    if (out->dst->dtype() == tensorflow::DT_FLOAT) {
      out->data = out->dst->flat<float>().data();
      return absl::OkStatus();
    }
    out->to_half = true;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_FLOAT, shape, &out->temp));
    out->data = out->temp.flat<float>().data();
    return absl::OkStatus();
  }

  static void Make(const FloatIn& in, const CpuContext& cpu) {
    const int64_t n = in.src->NumElements();
    if (in.make == FloatIn::Make::kFromHalf) {
      HalfToFloatCpu(reinterpret_cast<const uint16_t*>(in.src->data()), const_cast<float*>(in.data), n, cpu);
    } else if (in.make == FloatIn::Make::kRoundToHalf) {
      RoundToHalfCpu(in.src->flat<float>().data(), const_cast<float*>(in.data), n, cpu);
    }
  }
  static void Finish(const FloatOut& out, const CpuContext& cpu) {
    if (out.to_half) {
      FloatToHalfCpu(out.data, reinterpret_cast<uint16_t*>(out.dst->data()), out.dst->NumElements(), cpu);
    }
  }

  // Runs fn(cpu) with a workspace of `floats` floats from TF's allocator: on the CPU
  // device directly; on the tf-mps device `metal` first (conv_metal.mm, encoding into
  // the kernel's stream), and fn after the stream's queued work when it declines
  // (kUnsupported: float16 data or accumulation, fused epilogues it cannot run, MPS's
  // limits) or when there is no Metal path for the op (`metal` empty).
  using MetalFn = std::function<BackendStatus()>;
  void Launch(OpKernelContext* ctx, int64_t floats, const std::function<void(const CpuContext&)>& fn,
              const MetalFn& metal = MetalFn()) const {
    CpuContext cpu;
    cpu.parallel = tfglue::CpuParallelFor(ctx);
    cpu.threads = Threads(ctx);  // the count the workspace was sized for
    Tensor scratch;
    if (floats > 0) {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({floats}), &scratch));
      cpu.workspace = scratch.flat<float>().data();
      cpu.workspace_size = floats;
    }
#ifdef TFMPS_DEVICE_KERNELS
    device_glue::Run(
        ctx,
        [&] { return metal ? metal() : BackendStatus::Unsupported("conv: no Metal path for this op"); },
        [&] { fn(cpu); });
#else
    (void)metal;
    fn(cpu);
#endif
  }

  // The Metal backend takes float32 tensors as they are, with float32 accumulation.
  bool MetalCanTake(std::initializer_list<const FloatIn*> ins, std::initializer_list<const FloatOut*> outs) const {
    if (half_acc()) return false;
    for (const FloatIn* in : ins) {
      if (in->src != nullptr && in->make != FloatIn::Make::kAsIs) return false;
    }
    for (const FloatOut* out : outs) {
      if (out->to_half) return false;
    }
    return true;
  }

  int Threads(OpKernelContext* ctx) const {
    return std::max(1, ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads());
  }

  ConvAttrs attrs_;
};

// The forward convolution (MpsConv2D) and the transposed one (MpsConv2DTranspose) read
// a fused bias and activation.
class FusedKernel : public ConvKernel {
 public:
  explicit FusedKernel(OpKernelConstruction* c) : ConvKernel(c) {
    std::string activation;
    OP_REQUIRES_OK(c, c->GetAttr("num_bias", &num_bias_));
    OP_REQUIRES_OK(c, c->GetAttr("activation", &activation));
    OP_REQUIRES(c, num_bias_ <= 1,
                absl::InvalidArgumentError(absl::StrCat(type_string(), ": bias must be a list of 0 or 1 tensors, got ",
                                                        num_bias_)));
    activation_ = activation == "relu" ? Activation::kRelu : Activation::kNone;
  }

 protected:
  // The bias input, if any: 1-D, `channels` values (`what` names them in the message).
  absl::Status Bias(OpKernelContext* ctx, int index, int64_t channels, const char* what, FloatIn* bias) const {
    if (num_bias_ == 0) return absl::OkStatus();
    const Tensor& b = ctx->input(index);
    if (b.dims() != 1 || b.dim_size(0) != channels) {
      return absl::InvalidArgumentError(absl::StrCat(type_string(), ": bias must be 1-D with one value per output "
                                                     "channel (", what, ", ", channels, "), got shape ",
                                                     b.shape().DebugString()));
    }
    return In(ctx, index, /*operand=*/false, bias);
  }

  int64_t num_bias_ = 0;
  Activation activation_ = Activation::kNone;
};

class Conv2DOp : public FusedKernel {
 public:
  using FusedKernel::FusedKernel;

  void Compute(OpKernelContext* ctx) override {
    int64_t in[4], f[4];
    OP_REQUIRES_OK(ctx, Rank4(ctx, kFwdInput, "input", kInputLayout, in));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kFwdFilter, "filter", kFilterLayout, f));
    Conv2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(in, f, "input", "filter", &g));
    FloatIn x, w, b;
    OP_REQUIRES_OK(ctx, Bias(ctx, kFwdBias, g.out_c, "the filter's last dimension", &b));
    FloatOut y;
    OP_REQUIRES_OK(ctx, Out(ctx, 0, TensorShape({g.batch, g.out_h, g.out_w, g.out_c}), &y));
    if (y.dst->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, In(ctx, kFwdInput, true, &x));
    OP_REQUIRES_OK(ctx, In(ctx, kFwdFilter, true, &w));
    const int threads = Threads(ctx);
    const int64_t floats = half_acc() ? Conv2DForwardHalfAccCpuWorkspace(g, threads)
                                      : Conv2DForwardCpuWorkspace(g, threads);
    Launch(ctx, floats, [&](const CpuContext& cpu) {
      Make(x, cpu);
      Make(w, cpu);
      if (b.src != nullptr) Make(b, cpu);
      const Conv2DForwardArgs args{x.data, w.data, b.data, activation_, y.data};
      if (half_acc()) {
        Conv2DForwardHalfAccCpu(g, args, cpu);
      } else {
        Conv2DForwardCpu(g, args, cpu);
      }
      Finish(y, cpu);
    }, [&] {
#ifdef TFMPS_DEVICE_KERNELS
      if (!MetalCanTake({&x, &w, &b}, {&y})) return BackendStatus::Unsupported("conv: float16 data or accumulation");
      return Conv2DForwardMetal(g, Conv2DForwardArgs{x.data, w.data, b.data, activation_, y.data});
#else
      return BackendStatus::Unsupported("");
#endif
    });
  }
};

class Conv2DBackpropInputOp : public ConvKernel {
 public:
  using ConvKernel::ConvKernel;

  void Compute(OpKernelContext* ctx) override {
    int64_t in[4], f[4], dy[4];
    OP_REQUIRES_OK(ctx, Sizes(ctx, kBinSizes, "input_sizes", in));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kBinFilter, "filter", kFilterLayout, f));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kBinOutBackprop, "out_backprop", kInputLayout, dy));
    Conv2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(in, f, "input_sizes", "filter", &g));
    OP_REQUIRES_OK(ctx, CheckOutBackprop(ctx, kBinOutBackprop, g, "input_sizes", in, f));
    FloatOut dx;
    OP_REQUIRES_OK(ctx, Out(ctx, 0, TensorShape({in[0], in[1], in[2], in[3]}), &dx));
    if (dx.dst->NumElements() == 0) return;
    FloatIn w, d;
    OP_REQUIRES_OK(ctx, In(ctx, kBinFilter, true, &w));
    OP_REQUIRES_OK(ctx, In(ctx, kBinOutBackprop, true, &d));
    const int threads = Threads(ctx);
    Launch(ctx,
           half_acc() ? Conv2DBackpropInputHalfAccCpuWorkspace(g, threads)
                      : Conv2DBackpropInputCpuWorkspace(g, threads),
           [&](const CpuContext& cpu) {
             Make(w, cpu);
             Make(d, cpu);
             const Conv2DBackpropInputArgs args{w.data, d.data, dx.data};
             if (half_acc()) {
               Conv2DBackpropInputHalfAccCpu(g, args, cpu);
             } else {
               Conv2DBackpropInputCpu(g, args, cpu);
             }
             Finish(dx, cpu);
           }, [&] {
#ifdef TFMPS_DEVICE_KERNELS
             if (!MetalCanTake({&w, &d}, {&dx})) return BackendStatus::Unsupported("conv: float16 data or accumulation");
             return Conv2DBackpropInputMetal(g, Conv2DBackpropInputArgs{w.data, d.data, dx.data});
#else
             return BackendStatus::Unsupported("");
#endif
           });
  }
};

class Conv2DBackpropFilterOp : public ConvKernel {
 public:
  explicit Conv2DBackpropFilterOp(OpKernelConstruction* c) : ConvKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("num_bias", &num_bias_));
    OP_REQUIRES(c, num_bias_ <= 1,
                absl::InvalidArgumentError(absl::StrCat(
                    type_string(), ": num_bias must be 0 or 1 (one bias gradient or none), got ", num_bias_)));
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t in[4], f[4], dy[4];
    OP_REQUIRES_OK(ctx, Rank4(ctx, kBfInput, "input", kInputLayout, in));
    OP_REQUIRES_OK(ctx, Sizes(ctx, kBfSizes, "filter_sizes", f));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kBfOutBackprop, "out_backprop", kInputLayout, dy));
    Conv2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(in, f, "input", "filter_sizes", &g));
    OP_REQUIRES_OK(ctx, CheckOutBackprop(ctx, kBfOutBackprop, g, "input", in, f));
    FloatOut dw, db;
    OP_REQUIRES_OK(ctx, Out(ctx, 0, TensorShape({f[0], f[1], f[2], f[3]}), &dw));
    if (num_bias_ == 1) OP_REQUIRES_OK(ctx, Out(ctx, 1, TensorShape({f[3]}), &db));
    FloatIn x, d;
    OP_REQUIRES_OK(ctx, In(ctx, kBfInput, true, &x));
    OP_REQUIRES_OK(ctx, In(ctx, kBfOutBackprop, true, &d));
    const int threads = Threads(ctx);
    const bool bias = num_bias_ == 1;
    Launch(ctx,
           half_acc() ? Conv2DBackpropFilterHalfAccCpuWorkspace(g, threads, bias)
                      : Conv2DBackpropFilterCpuWorkspace(g, threads, bias),
           [&](const CpuContext& cpu) {
             Make(x, cpu);
             Make(d, cpu);
             const Conv2DBackpropFilterArgs args{x.data, d.data, dw.data, bias ? db.data : nullptr};
             if (half_acc()) {
               Conv2DBackpropFilterHalfAccCpu(g, args, cpu);
             } else {
               Conv2DBackpropFilterCpu(g, args, cpu);
             }
             Finish(dw, cpu);
             if (bias) Finish(db, cpu);
           }, [&] {
#ifdef TFMPS_DEVICE_KERNELS
             if (!MetalCanTake({&x, &d}, {&dw, &db})) {
               return BackendStatus::Unsupported("conv: float16 data or accumulation");
             }
             return Conv2DBackpropFilterMetal(g, Conv2DBackpropFilterArgs{x.data, d.data, dw.data,
                                                                          bias ? db.data : nullptr});
#else
             return BackendStatus::Unsupported("");
#endif
           });
  }

 private:
  int64_t num_bias_ = 0;
};

// y = act(conv2d_backprop_input(output_shape, filter, input) + bias): the input
// gradient's backend with the input as out_backprop, then the fused epilogue (under half
// accumulation the bias is added in float32 to the half sums, as in the forward op).
class Conv2DTransposeOp : public FusedKernel {
 public:
  using FusedKernel::FusedKernel;

  void Compute(OpKernelContext* ctx) override {
    int64_t x[4], f[4], out[4];
    OP_REQUIRES_OK(ctx, Rank4(ctx, kTrInput, "input", kInputLayout, x));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kTrFilter, "filter", kTransposeFilterLayout, f));
    OP_REQUIRES_OK(ctx, Sizes(ctx, kTrOutputShape, "output_shape", out));
    Conv2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(out, f, "output_shape", "filter", &g));
    const TensorShape expected({g.batch, g.out_h, g.out_w, g.out_c});
    OP_REQUIRES(ctx, ctx->input(kTrInput).shape() == expected,
                absl::InvalidArgumentError(absl::StrCat(
                    type_string(), ": input must have the shape that convolving an image of output_shape ",
                    DimsString(out), " with filter ", DimsString(f),
                    " under these strides, dilations and padding gives (the filter's last dimension is the input's "
                    "channels), expected ",
                    expected.DebugString(), ", got ", ctx->input(kTrInput).shape().DebugString())));
    FloatIn d, w, b;
    OP_REQUIRES_OK(ctx, Bias(ctx, kTrBias, out[3], "output_shape's last entry", &b));
    FloatOut y;
    OP_REQUIRES_OK(ctx, Out(ctx, 0, TensorShape({out[0], out[1], out[2], out[3]}), &y));
    if (y.dst->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, In(ctx, kTrInput, true, &d));
    OP_REQUIRES_OK(ctx, In(ctx, kTrFilter, true, &w));
    const int threads = Threads(ctx);
    Launch(ctx,
           half_acc() ? Conv2DBackpropInputHalfAccCpuWorkspace(g, threads)
                      : Conv2DBackpropInputCpuWorkspace(g, threads),
           [&](const CpuContext& cpu) {
             Make(d, cpu);
             Make(w, cpu);
             if (b.src != nullptr) Make(b, cpu);
             const Conv2DBackpropInputArgs args{w.data, d.data, y.data};
             if (half_acc()) {
               Conv2DBackpropInputHalfAccCpu(g, args, cpu);
             } else {
               Conv2DBackpropInputCpu(g, args, cpu);
             }
             BiasActivationCpu(y.data, g.in_pixels(), g.in_c, b.data, activation_, cpu);
             Finish(y, cpu);
           }, [&] {
#ifdef TFMPS_DEVICE_KERNELS
             if (!MetalCanTake({&d, &w, &b}, {&y})) return BackendStatus::Unsupported("conv: float16 data or accumulation");
             return Conv2DTransposeMetal(g, Conv2DTransposeArgs{d.data, w.data, b.data, activation_, y.data});
#else
             return BackendStatus::Unsupported("");
#endif
           });
  }
};

#ifndef TFMPS_DEVICE_KERNELS
#define TFMPS_REGISTER_CONV(T)                                                                                   \
  REGISTER_KERNEL_BUILDER(Name("MpsConv2D").Device(DEVICE_CPU).TypeConstraint<T>("T"), Conv2DOp);              \
  REGISTER_KERNEL_BUILDER(Name("MpsConv2DBackpropInput").Device(DEVICE_CPU).TypeConstraint<T>("T"),            \
                          Conv2DBackpropInputOp);                                                              \
  REGISTER_KERNEL_BUILDER(Name("MpsConv2DBackpropFilter").Device(DEVICE_CPU).TypeConstraint<T>("T"),           \
                          Conv2DBackpropFilterOp);                                                             \
  REGISTER_KERNEL_BUILDER(Name("MpsConv2DTranspose").Device(DEVICE_CPU).TypeConstraint<T>("T"), Conv2DTransposeOp)
TFMPS_REGISTER_CONV(float);
TFMPS_REGISTER_CONV(Eigen::half);
#undef TFMPS_REGISTER_CONV
REGISTER_KERNEL_BUILDER(Name("MpsConvCpuIsa").Device(DEVICE_CPU), ConvCpuIsaOp);
#endif  // TFMPS_DEVICE_KERNELS

}  // namespace

#ifdef TFMPS_DEVICE_KERNELS
namespace {
// The size vectors are read on the host (Sizes): TensorFlow copies them there first.
template <typename Kernel, typename T>
void RegisterOne(const char* name, const char* type, const char* host_input) {
  tensorflow::register_kernel::Name b(name);
  b.Device(type).TypeConstraint<T>("T");
  if (host_input != nullptr) b.HostMemory(host_input);
  new tensorflow::kernel_factory::OpKernelRegistrar(b.Build(), name,
                                                    [](OpKernelConstruction* c) -> OpKernel* { return new Kernel(c); });
}
template <typename T>
void RegisterType(const char* type) {
  RegisterOne<Conv2DOp, T>("MpsConv2D", type, nullptr);
  RegisterOne<Conv2DBackpropInputOp, T>("MpsConv2DBackpropInput", type, "input_sizes");
  RegisterOne<Conv2DBackpropFilterOp, T>("MpsConv2DBackpropFilter", type, "filter_sizes");
  RegisterOne<Conv2DTransposeOp, T>("MpsConv2DTranspose", type, "output_shape");
}
}  // namespace

// The device's conv kernels, float32 and float16: the glue above, whose backend runs on
// the CPU after the stream's queued work until conv_metal.mm is wired in (Launch). Runs
// during the device library's static initialization: string literals only.
void RegisterDeviceKernels(const char* type) {
  RegisterType<float>(type);
  RegisterType<Eigen::half>(type);
}
#endif  // TFMPS_DEVICE_KERNELS
}  // namespace conv
}  // namespace tfmps
