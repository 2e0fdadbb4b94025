// TensorFlow glue of the conv family: op definitions with shape functions, validation
// of every input and attribute, and dispatch to the backends declared in conv.h.
//
//   MpsConv2D(input [N,H,W,C], filter [KH,KW,C/G,O], bias: 0 or 1 x [O]) -> [N,OH,OW,O]
//   MpsConv2DBackpropInput(input_sizes (4 x int32), filter, out_backprop) -> [N,H,W,C]
//   MpsConv2DBackpropFilter(input, filter_sizes (4 x int32), out_backprop)
//       -> filter_backprop [KH,KW,C/G,O], bias_backprop: num_bias x [O]
//
// Attributes follow tf.nn.conv2d's raw op (Conv2D): strides and dilations are 4-element
// NHWC lists whose batch and depth entries are 1; padding SAME/VALID/EXPLICIT with
// explicit_paddings as 8 values (before/after per NHWC dimension, batch and depth 0).
// The groups count is the shapes': G = C / filter's third dimension (TF's rule).
// activation ("none"/"relu") is fused into the forward op only; its gradient is applied
// to out_backprop by the caller (tf_mps/ops/conv.py). accumulator_precision "float16"
// is reserved for the float16 slice of issue 11 and rejected (Unimplemented) for now.
#include <string>
#include <vector>

#include "ops/common/tf_glue.h"
#include "ops/conv/conv.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"


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

constexpr char kAttrT[] = "T: {float}";
constexpr char kAttrStrides[] = "strides: list(int)";
constexpr char kAttrDilations[] = "dilations: list(int) = [1, 1, 1, 1]";
constexpr char kAttrPadding[] = "padding: {'SAME', 'VALID', 'EXPLICIT'}";
constexpr char kAttrExplicit[] = "explicit_paddings: list(int) = []";
constexpr char kAttrAccumulator[] = "accumulator_precision: {'float32', 'float16'} = 'float32'";

// Named inputs.
enum ForwardInput { kFwdInput, kFwdFilter, kFwdBias };
enum InputGradInput { kBinSizes, kBinFilter, kBinOutBackprop };
enum FilterGradInput { kBfInput, kBfSizes, kBfOutBackprop };

const char kInputLayout[] = "[batch, height, width, channels] (NHWC)";
const char kFilterLayout[] = "[filter_height, filter_width, in_channels / groups, out_channels] (HWIO)";

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

// Attributes, the CPU context and the checks every conv kernel shares.
class ConvKernel : public OpKernel {
 public:
  explicit ConvKernel(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, ReadAttrs(c, type_string(), &attrs_));
    OP_REQUIRES(c, !attrs_.float16_accumulation,
                absl::UnimplementedError(absl::StrCat(
                    type_string(), ": accumulator_precision='float16' is not implemented yet on the CPU backend "
                                   "(its exact emulation, partial sums rounded to half, comes with float16 support); "
                                   "use 'float32'")));
  }

 protected:
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

  // A size vector input (input_sizes, filter_sizes): int32, 4 entries.
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

  // Runs fn(cpu) with a workspace of `floats` floats from TF's allocator.
  template <typename Fn>
  void RunCpu(OpKernelContext* ctx, int64_t floats, Fn fn) const {
    CpuContext cpu;
    cpu.parallel = tfglue::CpuParallelFor(ctx);
    cpu.threads = Threads(ctx);  // the count the workspace was sized for
    Tensor scratch;
    if (floats > 0) {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({floats}), &scratch));
      cpu.workspace = scratch.flat<float>().data();
      cpu.workspace_size = floats;
    }
    fn(cpu);
  }

  int Threads(OpKernelContext* ctx) const {
    return std::max(1, ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads());
  }

  ConvAttrs attrs_;
};

class Conv2DOp : public ConvKernel {
 public:
  explicit Conv2DOp(OpKernelConstruction* c) : ConvKernel(c) {
    std::string activation;
    OP_REQUIRES_OK(c, c->GetAttr("num_bias", &num_bias_));
    OP_REQUIRES_OK(c, c->GetAttr("activation", &activation));
    OP_REQUIRES(c, num_bias_ <= 1,
                absl::InvalidArgumentError(absl::StrCat(type_string(), ": bias must be a list of 0 or 1 tensors, got ",
                                                        num_bias_)));
    activation_ = activation == "relu" ? Activation::kRelu : Activation::kNone;
  }

  void Compute(OpKernelContext* ctx) override {
    int64_t in[4], f[4];
    OP_REQUIRES_OK(ctx, Rank4(ctx, kFwdInput, "input", kInputLayout, in));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kFwdFilter, "filter", kFilterLayout, f));
    Conv2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(in, f, "input", "filter", &g));
    const float* bias = nullptr;
    if (num_bias_ == 1) {
      const Tensor& b = ctx->input(kFwdBias);
      OP_REQUIRES(ctx, b.dims() == 1 && b.dim_size(0) == g.out_c,
                  absl::InvalidArgumentError(absl::StrCat(
                      type_string(), ": bias must be 1-D with one value per output channel (the filter's last "
                                     "dimension, ",
                      g.out_c, "), got shape ", b.shape().DebugString())));
      bias = b.flat<float>().data();
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({g.batch, g.out_h, g.out_w, g.out_c}), &out));
    if (out->NumElements() == 0) return;
    const Conv2DForwardArgs args{ctx->input(kFwdInput).flat<float>().data(),
                                 ctx->input(kFwdFilter).flat<float>().data(), bias, activation_,
                                 out->flat<float>().data()};
    RunCpu(ctx, Conv2DForwardCpuWorkspace(g, Threads(ctx)),
           [&](const CpuContext& cpu) { Conv2DForwardCpu(g, args, cpu); });
  }

 private:
  int64_t num_bias_ = 0;
  Activation activation_ = Activation::kNone;
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
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({in[0], in[1], in[2], in[3]}), &out));
    if (out->NumElements() == 0) return;
    const Conv2DBackpropInputArgs args{ctx->input(kBinFilter).flat<float>().data(),
                                       ctx->input(kBinOutBackprop).flat<float>().data(), out->flat<float>().data()};
    RunCpu(ctx, Conv2DBackpropInputCpuWorkspace(g, Threads(ctx)),
           [&](const CpuContext& cpu) { Conv2DBackpropInputCpu(g, args, cpu); });
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
    Tensor* dw = nullptr;
    Tensor* db = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({f[0], f[1], f[2], f[3]}), &dw));
    if (num_bias_ == 1) OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({f[3]}), &db));
    const Conv2DBackpropFilterArgs args{ctx->input(kBfInput).flat<float>().data(),
                                        ctx->input(kBfOutBackprop).flat<float>().data(), dw->flat<float>().data(),
                                        db != nullptr ? db->flat<float>().data() : nullptr};
    RunCpu(ctx, Conv2DBackpropFilterCpuWorkspace(g, Threads(ctx), db != nullptr),
           [&](const CpuContext& cpu) { Conv2DBackpropFilterCpu(g, args, cpu); });
  }

 private:
  int64_t num_bias_ = 0;
};

#ifndef TFMPS_DEVICE_KERNELS
REGISTER_KERNEL_BUILDER(Name("MpsConv2D").Device(DEVICE_CPU).TypeConstraint<float>("T"), Conv2DOp);
REGISTER_KERNEL_BUILDER(Name("MpsConv2DBackpropInput").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        Conv2DBackpropInputOp);
REGISTER_KERNEL_BUILDER(Name("MpsConv2DBackpropFilter").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        Conv2DBackpropFilterOp);
REGISTER_KERNEL_BUILDER(Name("MpsConvCpuIsa").Device(DEVICE_CPU), ConvCpuIsaOp);
#endif  // TFMPS_DEVICE_KERNELS

}  // namespace

#ifdef TFMPS_DEVICE_KERNELS
// The device's conv kernels (none yet: on the device the ops run on the CPU device).
void RegisterDeviceKernels(const char* /*type*/) {}
#endif  // TFMPS_DEVICE_KERNELS
}  // namespace conv
}  // namespace tfmps
