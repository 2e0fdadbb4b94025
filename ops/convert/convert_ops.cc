// TensorFlow glue of the convert family: MpsConvert, one op for every pair of layouts
// (convert.h), with dtype conversion and an optional per-channel affine on the way.
#include <string>

#include "ops/common/tf_glue.h"
#include "ops/convert/convert.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/overflow.h"

namespace tfmps {
namespace convert {
namespace {

using tensorflow::DataType;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

constexpr char kLayouts[] = "{'nhwc', 'sequence', 'time_major', 'image', 'matrix_hwc', 'matrix_chw'}";

Layout ParseLayout(const std::string& s) {
  if (s == "sequence") return Layout::kSequence;
  if (s == "time_major") return Layout::kTimeMajor;
  if (s == "image") return Layout::kImage;
  if (s == "matrix_hwc") return Layout::kMatrixHwc;
  if (s == "matrix_chw") return Layout::kMatrixChw;
  return Layout::kNhwc;
}

int Rank(Layout l) {
  switch (l) {
    case Layout::kNhwc: return 4;
    case Layout::kSequence:
    case Layout::kTimeMajor: return 3;
    case Layout::kImage: return 5;
    default: return 2;
  }
}

DType ToDType(DataType t) {
  return t == tensorflow::DT_UINT8 ? DType::kUint8 : t == tensorflow::DT_HALF ? DType::kFloat16 : DType::kFloat32;
}

// The (height, width, channels) attributes: -1 = "take it from the input's shape".
struct GeometryAttrs {
  int64_t height = -1, width = -1, channels = -1;
};

// Each geometry attribute is -1 (unset) or a size (>= 0); any other negative value is a
// mistake, not another way to say "unset". Checked by the shape function and the kernel.
absl::Status CheckGeometryAttrs(const std::string& op, const GeometryAttrs& a) {
  const struct { int64_t value; const char* name; } attrs[] = {
      {a.height, "height"}, {a.width, "width"}, {a.channels, "channels"}};
  for (const auto& attr : attrs) {
    if (attr.value < -1) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": attribute ", attr.name,
                                                     " must be -1 (unset) or a size >= 0, got ", attr.value));
    }
  }
  return absl::OkStatus();
}

// Reads the logical geometry of `shape` in layout `l`, checked against the attributes.
// Errors name the op and the argument and say what was expected.
absl::Status InputGeometry(const std::string& op, Layout l, const std::string& layout_name,
                           const TensorShape& shape, const GeometryAttrs& a, Geometry* g) {
  if (shape.dims() != Rank(l)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": input in layout '", layout_name, "' must have rank ",
                                                   Rank(l), ", got shape ", shape.DebugString()));
  }
  auto need = [&](int64_t v, const char* name) -> absl::Status {
    if (v < 1) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": attribute ", name, " (>= 1) is required to read an input in layout '",
                                                     layout_name, "', got ", v));
    }
    return absl::OkStatus();
  };
  switch (l) {
    case Layout::kNhwc:
      *g = {shape.dim_size(0), shape.dim_size(1), shape.dim_size(2), shape.dim_size(3)};
      break;
    case Layout::kSequence:
      *g = {shape.dim_size(0), shape.dim_size(1), 1, shape.dim_size(2)};
      break;
    case Layout::kTimeMajor:
      *g = {shape.dim_size(1), shape.dim_size(0), 1, shape.dim_size(2)};
      break;
    case Layout::kImage: {
      TF_RETURN_IF_ERROR(need(a.channels, "channels"));
      if (shape.dim_size(4) != 4 || shape.dim_size(1) != a.channels / 4 + (a.channels % 4 != 0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            op, ": an image-layout input of ", a.channels, " channels must have shape [N, ",
            a.channels / 4 + (a.channels % 4 != 0), ", H, W, 4] (ceil(channels/4) slices of 4), got ",
            shape.DebugString()));
      }
      *g = {shape.dim_size(0), shape.dim_size(2), shape.dim_size(3), a.channels};
      break;
    }
    case Layout::kMatrixHwc:
    case Layout::kMatrixChw: {
      TF_RETURN_IF_ERROR(need(a.height, "height"));
      TF_RETURN_IF_ERROR(need(a.width, "width"));
      TF_RETURN_IF_ERROR(need(a.channels, "channels"));
      const int64_t row = tensorflow::MultiplyWithoutOverflow(
          tensorflow::MultiplyWithoutOverflow(a.height, a.width), a.channels);
      if (row < 0 || shape.dim_size(1) != row) {
        return absl::InvalidArgumentError(absl::StrCat(
            op, ": a matrix input of height*width*channels = ", a.height, "*", a.width, "*", a.channels,
            " must have shape [N, ", row, "], got ", shape.DebugString()));
      }
      *g = {shape.dim_size(0), a.height, a.width, a.channels};
      break;
    }
  }
  // Attributes given for a layout that carries the dimension must agree with it.
  const struct { int64_t attr, actual; const char* name; } checks[] = {
      {a.height, g->h, "height"}, {a.width, g->w, "width"}, {a.channels, g->c, "channels"}};
  for (const auto& c : checks) {
    if (c.attr >= 0 && c.attr != c.actual) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": attribute ", c.name, "=", c.attr,
                                                     " does not match the input's ", c.actual, " (shape ",
                                                     shape.DebugString(), ", layout '", layout_name, "')"));
    }
  }
  return absl::OkStatus();
}

absl::Status OutputShape(const std::string& op, Layout l, const std::string& layout_name, const Geometry& g,
                         TensorShape* out) {
  if ((l == Layout::kSequence || l == Layout::kTimeMajor) && g.w != 1) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": output layout '", layout_name,
                                                   "' holds sequences (width 1), but the input has width ", g.w));
  }
  std::vector<int64_t> dims;
  switch (l) {
    case Layout::kNhwc: dims = {g.n, g.h, g.w, g.c}; break;
    case Layout::kSequence: dims = {g.n, g.h, g.c}; break;
    case Layout::kTimeMajor: dims = {g.h, g.n, g.c}; break;
    case Layout::kImage: dims = {g.n, g.slices(), g.h, g.w, 4}; break;
    case Layout::kMatrixHwc:
    case Layout::kMatrixChw:
      dims = {g.n, tensorflow::MultiplyWithoutOverflow(tensorflow::MultiplyWithoutOverflow(g.h, g.w), g.c)};
      break;
  }
  // BuildTensorShape rejects negative dims and element counts that overflow int64.
  absl::Status s = TensorShape::BuildTensorShape(dims, out);
  if (!s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": the output in layout '", layout_name,
                                                   "' would be too large (", g.n, " x ", g.h, " x ", g.w, " x ", g.c,
                                                   " elements): ", s.message()));
  }
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("MpsConvert")
    .Input("input: Tin")
    .Input("scale: A * float")
    .Input("bias: B * float")
    .Output("output: Tout")
    .Attr("Tin: {uint8, half, float}")
    .Attr("Tout: {uint8, half, float}")
    .Attr("A: int >= 0")
    .Attr("B: int >= 0")
    .Attr(absl::StrCat("src_layout: ", kLayouts))
    .Attr(absl::StrCat("dst_layout: ", kLayouts))
    .Attr("height: int = -1")
    .Attr("width: int = -1")
    .Attr("channels: int = -1")
    .Attr("affine: {'forward', 'inverse'} = 'forward'")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      std::string src_name, dst_name;
      GeometryAttrs a;
      TF_RETURN_IF_ERROR(c->GetAttr("src_layout", &src_name));
      TF_RETURN_IF_ERROR(c->GetAttr("dst_layout", &dst_name));
      TF_RETURN_IF_ERROR(c->GetAttr("height", &a.height));
      TF_RETURN_IF_ERROR(c->GetAttr("width", &a.width));
      TF_RETURN_IF_ERROR(c->GetAttr("channels", &a.channels));
      TF_RETURN_IF_ERROR(CheckGeometryAttrs("MpsConvert", a));
      int na, nb;
      TF_RETURN_IF_ERROR(c->GetAttr("A", &na));
      TF_RETURN_IF_ERROR(c->GetAttr("B", &nb));
      if (na > 1 || nb > 1) return absl::InvalidArgumentError("MpsConvert: scale and bias are optional single vectors");
      const Layout src = ParseLayout(src_name), dst = ParseLayout(dst_name);
      ShapeHandle in = c->input(0);
      if (c->RankKnown(in) && c->Rank(in) != Rank(src)) {  // the kernel's message, at graph build time
        return absl::InvalidArgumentError(absl::StrCat("MpsConvert: input in layout '", src_name,
                                                       "' must have rank ", Rank(src), ", got shape ",
                                                       c->DebugString(in)));
      }
      TF_RETURN_IF_ERROR(c->WithRank(in, Rank(src), &in));
      // scale and bias hold one value per channel: checked as soon as the channel count is
      // known (the last input dimension, or the channels attribute of image and matrix
      // inputs), so that a mistake shows when a tf.data pipeline is built, even one that
      // never yields a batch.
      const int64_t channels = (src == Layout::kImage || src == Layout::kMatrixHwc || src == Layout::kMatrixChw)
                                   ? a.channels
                                   : c->Value(c->Dim(in, Rank(src) - 1));
      for (int k = 0; k < na + nb; ++k) {
        const char* name = k < na ? "scale" : "bias";
        ShapeHandle v = c->input(1 + k);
        if (c->RankKnown(v) && (c->Rank(v) != 1 || (channels >= 0 && c->ValueKnown(c->Dim(v, 0)) &&
                                                    c->Value(c->Dim(v, 0)) != channels))) {
          return absl::InvalidArgumentError(absl::StrCat("MpsConvert: ", name, " must be a vector of ", channels,
                                                         " values (one per channel), got shape ",
                                                         c->DebugString(v)));
        }
      }
      if (!c->FullyDefined(in)) {
        c->set_output(0, c->UnknownShapeOfRank(Rank(dst)));
        return absl::OkStatus();
      }
      TensorShape shape;
      for (int i = 0; i < Rank(src); ++i) TF_RETURN_IF_ERROR(shape.AddDimWithStatus(c->Value(c->Dim(in, i))));
      Geometry g;
      TF_RETURN_IF_ERROR(InputGeometry("MpsConvert", src, src_name, shape, a, &g));
      TensorShape out;
      TF_RETURN_IF_ERROR(OutputShape("MpsConvert", dst, dst_name, g, &out));
      ShapeHandle out_handle;
      TF_RETURN_IF_ERROR(c->MakeShapeFromTensorShape(out, &out_handle));
      c->set_output(0, out_handle);
      return absl::OkStatus();
    })
    .Doc("Converts between NHWC/sequence tensors, MPS image layout and MPS matrices (convert.h).");

namespace {

class ConvertOp : public OpKernel {
 public:
  explicit ConvertOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("src_layout", &src_name_));
    OP_REQUIRES_OK(c, c->GetAttr("dst_layout", &dst_name_));
    OP_REQUIRES_OK(c, c->GetAttr("height", &attrs_.height));
    OP_REQUIRES_OK(c, c->GetAttr("width", &attrs_.width));
    OP_REQUIRES_OK(c, c->GetAttr("channels", &attrs_.channels));
    OP_REQUIRES_OK(c, CheckGeometryAttrs(type_string(), attrs_));
    std::string affine;
    OP_REQUIRES_OK(c, c->GetAttr("affine", &affine));
    int na, nb;
    OP_REQUIRES_OK(c, c->GetAttr("A", &na));
    OP_REQUIRES_OK(c, c->GetAttr("B", &nb));
    OP_REQUIRES(c, na <= 1 && nb <= 1,
                absl::InvalidArgumentError("MpsConvert: scale and bias are optional single vectors"));
    has_scale_ = na == 1;
    has_bias_ = nb == 1;
    args_.src_layout = ParseLayout(src_name_);
    args_.dst_layout = ParseLayout(dst_name_);
    args_.affine = affine == "inverse" ? Affine::kInverse : Affine::kForward;
    DataType tin, tout;
    OP_REQUIRES_OK(c, c->GetAttr("Tin", &tin));
    OP_REQUIRES_OK(c, c->GetAttr("Tout", &tout));
    args_.src_type = ToDType(tin);
    args_.dst_type = ToDType(tout);
  }

  void Compute(OpKernelContext* ctx) override {
    const std::string op = type_string();
    const Tensor& input = ctx->input(0);
    ConvertArgs args = args_;
    OP_REQUIRES_OK(ctx, InputGeometry(op, args.src_layout, src_name_, input.shape(), attrs_, &args.geometry));
    const int64_t channels = args.geometry.c;
    for (int k = 0; k < (has_scale_ ? 1 : 0) + (has_bias_ ? 1 : 0); ++k) {
      const char* name = (k == 0 && has_scale_) ? "scale" : "bias";
      const Tensor& t = ctx->input(1 + k);
      OP_REQUIRES(ctx, t.dims() == 1 && t.dim_size(0) == channels,
                  absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must be a vector of ", channels,
                                                          " values (one per channel), got shape ",
                                                          t.shape().DebugString())));
      (name[0] == 's' ? args.scale : args.bias) = t.flat<float>().data();
    }
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, OutputShape(op, args.dst_layout, dst_name_, args.geometry, &out_shape));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &output));
    if (output->NumElements() == 0) return;
    args.src = input.data();
    args.dst = output->data();
    ConvertCpu(args, tfglue::CpuParallelFor(ctx));
  }

 private:
  std::string src_name_, dst_name_;
  GeometryAttrs attrs_;
  bool has_scale_ = false, has_bias_ = false;
  ConvertArgs args_;
};

REGISTER_KERNEL_BUILDER(Name("MpsConvert").Device(tensorflow::DEVICE_CPU), ConvertOp);

}  // namespace
}  // namespace convert
}  // namespace tfmps
