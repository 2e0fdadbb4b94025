// TensorFlow glue of the dense family: op definitions with shape functions, validation
// of every input and attribute, and dispatch to the backends declared in dense.h.
// Compiled twice: into the op library (CPU kernels), and with TFMPS_DEVICE_KERNELS into
// the device kernels library (RegisterDeviceKernels at the end).
//
//   MpsDense(x [..., K], kernel [K, M], bias: 0 or 1 x [M]) -> y [..., M]
//   MpsDenseBackpropInput(dy [..., M], kernel [K, M], y: 0 or 1 x [..., M]) -> dx [..., K]
//   MpsDenseBackpropKernel(x [..., K], dy [..., M], y: 0 or 1 x [..., M])
//       -> dkernel [K, M], dbias: num_bias x [M]
//
// T is float32 or float16 for every tensor of an op. activation ("none" or "relu") is
// fused into the forward op; the backprop ops take the forward output y (exactly when
// activation is "relu") and mask dy by y > 0 themselves (TF's ReluGrad). The attributes
// activation and accumulator_precision ("float32" or "float16", dense.h's model) are
// strings checked here, so a wrong value gets this family's message.
//
// On the tf-mps device: float32 with float32 accumulation runs on Metal in the kernel's
// stream (the device's MPSMatrixMultiplication, then its bias-add / relu / ReluGrad /
// column-sum kernels, device_ops.h); every other combination (float16 data, half
// accumulation) returns kUnsupported there and runs the CPU backend after the stream.
#include <climits>
#include <string>
#include <type_traits>
#include <vector>

#include "ops/common/tf_glue.h"
#include "ops/dense/dense.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/overflow.h"

#ifdef TFMPS_DEVICE_KERNELS
#include "ops/device/device_kernels_glue.h"
#include "ops/device/device_ops.h"
#endif

namespace tfmps {
namespace dense {
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
constexpr char kAttrActivation[] = "activation: string = 'none'";
constexpr char kAttrAccumulator[] = "accumulator_precision: string = 'float32'";

// Named inputs.
enum ForwardInput { kFwdX, kFwdKernel, kFwdBias };
enum InputGradInput { kBinDy, kBinKernel, kBinY };
enum KernelGradInput { kBkX, kBkDy, kBkY };

const char kXLayout[] = "[..., in_features]";
const char kKernelLayout[] = "[in_features, units]";

// The attributes every dense op shares, read and validated once.
struct DenseAttrs {
  Activation activation = Activation::kNone;
  Accumulator accumulator = Accumulator::kFloat32;
};

template <typename Ctx>
absl::Status ReadAttrs(Ctx* c, const std::string& op, DenseAttrs* a) {
  std::string activation, accumulator;
  TF_RETURN_IF_ERROR(c->GetAttr("activation", &activation));
  TF_RETURN_IF_ERROR(c->GetAttr("accumulator_precision", &accumulator));
  if (activation == "none") {
    a->activation = Activation::kNone;
  } else if (activation == "relu") {
    a->activation = Activation::kRelu;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": activation must be 'none' or 'relu', got '", activation, "'"));
  }
  if (accumulator == "float32") {
    a->accumulator = Accumulator::kFloat32;
  } else if (accumulator == "float16") {
    a->accumulator = Accumulator::kFloat16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": accumulator_precision must be 'float32' or 'float16', got '", accumulator, "'"));
  }
  return absl::OkStatus();
}

// The number attribute of an optional list (bias, y): 0 or 1; for y it must be 1 exactly
// when the activation is relu (its mask).
template <typename Ctx>
absl::Status ReadListCount(Ctx* c, const std::string& op, const char* attr, const char* what, int64_t* n) {
  TF_RETURN_IF_ERROR(c->GetAttr(attr, n));
  if (*n > 1) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " must be a list of 0 or 1 tensors, got ", *n));
  }
  return absl::OkStatus();
}

template <typename Ctx>
absl::Status ReadNumY(Ctx* c, const std::string& op, const DenseAttrs& a, int64_t* num_y) {
  TF_RETURN_IF_ERROR(ReadListCount(c, op, "num_y", "y", num_y));
  const int64_t expected = a.activation == Activation::kRelu ? 1 : 0;
  if (*num_y != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": y (the forward output, relu's mask) must be given exactly when activation is 'relu': expected ",
        expected, " tensor", expected == 1 ? "" : "s", " for activation '",
        a.activation == Activation::kRelu ? "relu" : "none", "', got ", *num_y));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- shape functions
absl::Status AtLeast2D(InferenceContext* c, int index, const std::string& op, const char* name, const char* layout) {
  ShapeHandle s = c->input(index);
  if (c->RankKnown(s) && c->Rank(s) < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must be at least 2-D ", layout, ", got shape ", c->DebugString(s)));
  }
  return absl::OkStatus();
}

absl::Status Exactly2D(InferenceContext* c, int index, const std::string& op, const char* name, const char* layout) {
  ShapeHandle s = c->input(index);
  if (c->RankKnown(s) && c->Rank(s) != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must be 2-D ", layout, ", got shape ", c->DebugString(s)));
  }
  return absl::OkStatus();
}

// Dimension i of input `index` (negative: from the end), unknown when the rank is.
DimensionHandle DimOf(InferenceContext* c, int index, int i) {
  ShapeHandle s = c->input(index);
  if (!c->RankKnown(s)) return c->UnknownDim();
  return c->Dim(s, i < 0 ? c->Rank(s) + i : i);
}

// Two dimensions that must agree: "<op>: <what>: expected <a>, got <b> (<context>)".
absl::Status MergeDims(InferenceContext* c, const std::string& op, DimensionHandle a, DimensionHandle b,
                       const std::string& what, const std::string& context, DimensionHandle* out) {
  if (c->Merge(a, b, out).ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", what, ": expected ", c->DebugString(a), ", got ", c->DebugString(b), " (", context, ")"));
}

// shape[:-1] + [last].
absl::Status ReplaceLast(InferenceContext* c, int index, DimensionHandle last, ShapeHandle* out) {
  ShapeHandle s = c->input(index);
  if (!c->RankKnown(s)) {
    *out = c->UnknownShape();
    return absl::OkStatus();
  }
  ShapeHandle lead;
  TF_RETURN_IF_ERROR(c->Subshape(s, 0, -1, &lead));
  return c->Concatenate(lead, c->Vector(last), out);
}

absl::Status ForwardShape(InferenceContext* c) {
  const std::string op = "MpsDense";
  DenseAttrs a;
  int64_t num_bias = 0;
  TF_RETURN_IF_ERROR(ReadAttrs(c, op, &a));
  TF_RETURN_IF_ERROR(ReadListCount(c, op, "num_bias", "bias", &num_bias));
  TF_RETURN_IF_ERROR(AtLeast2D(c, kFwdX, op, "x", kXLayout));
  TF_RETURN_IF_ERROR(Exactly2D(c, kFwdKernel, op, "kernel", kKernelLayout));
  DimensionHandle k, m = DimOf(c, kFwdKernel, 1);
  const std::string ctx = absl::StrCat("x ", c->DebugString(c->input(kFwdX)), ", kernel ",
                                       c->DebugString(c->input(kFwdKernel)));
  TF_RETURN_IF_ERROR(MergeDims(c, op, DimOf(c, kFwdKernel, 0), DimOf(c, kFwdX, -1),
                               "x's last dimension must equal the kernel's first (in_features)", ctx, &k));
  if (num_bias == 1) {
    ShapeHandle b = c->input(kFwdBias);
    if (c->RankKnown(b) && c->Rank(b) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": bias must be 1-D [units], got shape ", c->DebugString(b)));
    }
    TF_RETURN_IF_ERROR(MergeDims(c, op, m, DimOf(c, kFwdBias, 0),
                                 "bias must have one value per unit (the kernel's last dimension)",
                                 absl::StrCat("bias ", c->DebugString(b), ", kernel ",
                                              c->DebugString(c->input(kFwdKernel))),
                                 &m));
  }
  ShapeHandle out;
  TF_RETURN_IF_ERROR(ReplaceLast(c, kFwdX, m, &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

absl::Status BackpropInputShape(InferenceContext* c) {
  const std::string op = "MpsDenseBackpropInput";
  DenseAttrs a;
  int64_t num_y = 0;
  TF_RETURN_IF_ERROR(ReadAttrs(c, op, &a));
  TF_RETURN_IF_ERROR(ReadNumY(c, op, a, &num_y));
  TF_RETURN_IF_ERROR(AtLeast2D(c, kBinDy, op, "dy", "[..., units]"));
  TF_RETURN_IF_ERROR(Exactly2D(c, kBinKernel, op, "kernel", kKernelLayout));
  DimensionHandle m;
  TF_RETURN_IF_ERROR(MergeDims(c, op, DimOf(c, kBinKernel, 1), DimOf(c, kBinDy, -1),
                               "dy's last dimension must equal the kernel's last (units)",
                               absl::StrCat("dy ", c->DebugString(c->input(kBinDy)), ", kernel ",
                                            c->DebugString(c->input(kBinKernel))),
                               &m));
  if (num_y == 1) {
    ShapeHandle merged;
    if (!c->Merge(c->input(kBinDy), c->input(kBinY), &merged).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": y must have dy's shape: expected ",
                                                     c->DebugString(c->input(kBinDy)), ", got ",
                                                     c->DebugString(c->input(kBinY))));
    }
  }
  ShapeHandle out;
  TF_RETURN_IF_ERROR(ReplaceLast(c, kBinDy, DimOf(c, kBinKernel, 0), &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

absl::Status BackpropKernelShape(InferenceContext* c) {
  const std::string op = "MpsDenseBackpropKernel";
  DenseAttrs a;
  int64_t num_y = 0, num_bias = 0;
  TF_RETURN_IF_ERROR(ReadAttrs(c, op, &a));
  TF_RETURN_IF_ERROR(ReadNumY(c, op, a, &num_y));
  TF_RETURN_IF_ERROR(ReadListCount(c, op, "num_bias", "dbias", &num_bias));
  TF_RETURN_IF_ERROR(AtLeast2D(c, kBkX, op, "x", kXLayout));
  TF_RETURN_IF_ERROR(AtLeast2D(c, kBkDy, op, "dy", "[..., units]"));
  if (num_y == 1) {
    ShapeHandle merged;
    if (!c->Merge(c->input(kBkDy), c->input(kBkY), &merged).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": y must have dy's shape: expected ",
                                                     c->DebugString(c->input(kBkDy)), ", got ",
                                                     c->DebugString(c->input(kBkY))));
    }
  }
  const DimensionHandle k = DimOf(c, kBkX, -1), m = DimOf(c, kBkDy, -1);
  c->set_output(0, c->Matrix(k, m));
  if (num_bias == 1) c->set_output(1, c->Vector(m));
  return absl::OkStatus();
}

}  // namespace

// -------------------------------------------------------------------------- ops
TFMPS_REGISTER_OP("MpsDense")
    .Input("x: T").Input("kernel: T").Input("bias: num_bias * T")
    .Output("y: T")
    .Attr(kAttrT).Attr("num_bias: int >= 0").Attr(kAttrActivation).Attr(kAttrAccumulator)
    .SetShapeFn(ForwardShape)
    .Doc(R"doc(
Fully connected layer: y = activation(x @ kernel + bias) over x's last dimension, with
kernel [in_features, units] (Keras's layout) and an optional bias (a list of 0 or 1
tensors). See tf_mps.ops.dense.dense.
)doc");

TFMPS_REGISTER_OP("MpsDenseBackpropInput")
    .Input("dy: T").Input("kernel: T").Input("y: num_y * T")
    .Output("dx: T")
    .Attr(kAttrT).Attr("num_y: int >= 0 = 0").Attr(kAttrActivation).Attr(kAttrAccumulator)
    .SetShapeFn(BackpropInputShape)
    .Doc("Gradient of MpsDense with respect to x: (dy masked by y > 0 for relu) @ kernel^T.");

TFMPS_REGISTER_OP("MpsDenseBackpropKernel")
    .Input("x: T").Input("dy: T").Input("y: num_y * T")
    .Output("dkernel: T").Output("dbias: num_bias * T")
    .Attr(kAttrT).Attr("num_y: int >= 0 = 0").Attr("num_bias: int >= 0 = 0").Attr(kAttrActivation)
    .Attr(kAttrAccumulator)
    .SetShapeFn(BackpropKernelShape)
    .Doc(R"doc(
Gradient of MpsDense with respect to its kernel, x^T @ g, and (num_bias = 1) its bias,
the sum of g over the rows, with g = dy masked by y > 0 for relu.
)doc");

// -------------------------------------------------------------------------- kernels
namespace {

// The rows of a [..., last] tensor: the product of its leading dims.
// The rows of a [..., last] tensor: the product of its leading dims (INT64_MAX when that
// overflows, which only a tensor with no elements can have; Sizes rejects it).
int64_t Rows(const TensorShape& s) {
  int64_t rows = 1;
  for (int d = 0; d + 1 < s.dims(); ++d) {
    rows = tensorflow::MultiplyWithoutOverflow(rows, s.dim_size(d));
    if (rows < 0) return INT64_MAX;
  }
  return rows;
}

template <typename T>
constexpr DType DTypeOf() {
  return std::is_same_v<T, float> ? DType::kFloat32 : DType::kFloat16;
}

// Attributes, validation helpers and the CPU run every dense kernel shares.
template <typename T>
class DenseKernel : public OpKernel {
 public:
  explicit DenseKernel(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, ReadAttrs(c, type_string(), &attrs_)); }

 protected:
  DenseConfig Config() const { return DenseConfig{DTypeOf<T>(), attrs_.accumulator, attrs_.activation}; }

  absl::Status AtLeast2D(OpKernelContext* ctx, int index, const char* name, const char* layout) const {
    const TensorShape& s = ctx->input(index).shape();
    if (s.dims() >= 2) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat(type_string(), ": ", name, " must be at least 2-D ", layout, ", got shape ", s.DebugString()));
  }

  absl::Status Kernel2D(OpKernelContext* ctx, int index) const {
    const TensorShape& s = ctx->input(index).shape();
    if (s.dims() == 2) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(type_string(), ": kernel must be 2-D ", kKernelLayout,
                                                   ", got shape ", s.DebugString()));
  }

  // BLAS counts with int: every size must fit.
  absl::Status FitsInt(const char* what, int64_t n) const {
    if (n <= INT_MAX) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(type_string(), ": ", what, " must be at most ", INT_MAX,
                                                   " (the BLAS index range), got ", n));
  }

  absl::Status Sizes(const DenseDims& d) const {
    TF_RETURN_IF_ERROR(FitsInt("the number of rows (the product of the leading dimensions)", d.rows));
    TF_RETURN_IF_ERROR(FitsInt("in_features", d.in));
    return FitsInt("units", d.out);
  }

  absl::Status SameShape(OpKernelContext* ctx, int index, const char* name, const TensorShape& expected,
                         const char* like) const {
    const TensorShape& got = ctx->input(index).shape();
    if (got == expected) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(type_string(), ": ", name, " must have ", like, "'s shape: expected ",
                                                   expected.DebugString(), ", got ", got.DebugString()));
  }

  // Runs fn(cpu) with a workspace of `floats` floats from TF's allocator.
  template <typename Fn>
  void RunCpu(OpKernelContext* ctx, int64_t floats, Fn fn) const {
    CpuContext cpu;
    cpu.parallel = tfglue::CpuParallelFor(ctx);
    cpu.threads = std::max(1, ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads());
    Tensor scratch;
    if (floats > 0) {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({floats}), &scratch));
      cpu.workspace = scratch.flat<float>().data();
      cpu.workspace_size = floats;
    }
    fn(cpu);
  }

  // The CPU backend on the CPU device; on the tf-mps device the Metal path (float32 data
  // with float32 accumulation only) in the kernel's stream, else the CPU backend after it.
  template <typename MetalFn, typename CpuFn>
  void Dispatch(OpKernelContext* ctx, MetalFn metal, CpuFn cpu) {
#ifdef TFMPS_DEVICE_KERNELS
    device_glue::Run(
        ctx,
        [&]() -> BackendStatus {
          if constexpr (std::is_same_v<T, float>) {
            if (attrs_.accumulator == Accumulator::kFloat32) return metal();
          }
          return BackendStatus::Unsupported("float16 data or half accumulation: the CPU backend");
        },
        cpu);
#else
    (void)metal;
    cpu();
#endif
  }

  static const void* Ptr(const Tensor& t) { return t.NumElements() == 0 ? nullptr : t.data(); }
  static void* Ptr(Tensor* t) { return t->data(); }

  DenseAttrs attrs_;
};

#ifdef TFMPS_DEVICE_KERNELS
// The device's Metal building blocks (device_ops.h), float32.
device_ops::Broadcast RowBroadcast(int64_t rows, int64_t cols) {
  device_ops::Broadcast b;
  b.rank = 2;
  b.dims[0] = rows;
  b.dims[1] = cols;
  b.x_strides[0] = cols;
  b.x_strides[1] = 1;
  b.y_strides[0] = 0;
  b.y_strides[1] = 1;
  b.x_size = b.out_size = rows * cols;
  b.y_size = cols;
  return b;
}

// g = dy masked by y > 0 (the device's ReluGrad kernel) into a temporary, or dy itself.
BackendStatus MaskOnDevice(OpKernelContext* ctx, const Tensor& dy, const Tensor* y, int64_t rows, int64_t cols,
                           Tensor* temp, const float** g) {
  *g = dy.flat<float>().data();
  if (y == nullptr) return BackendStatus::Ok();
  if (!ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({rows, cols}), temp).ok()) {
    return BackendStatus::Unsupported("no device memory for the masked gradient");
  }
  float* out = temp->flat<float>().data();
  device_ops::Broadcast b;
  b.rank = 1;
  b.dims[0] = rows * cols;
  b.x_strides[0] = b.y_strides[0] = 1;
  b.x_size = b.y_size = b.out_size = rows * cols;
  const BackendStatus s = device_ops::Binary(TFMPS_BINARY_RELU_GRAD, device_ops::Elem::kF32, *g,
                                             y->flat<float>().data(), out, b);
  *g = out;
  return s;
}
#define TFMPS_DENSE_RETURN_IF_NOT_OK(expr) \
  do {                                     \
    BackendStatus _s = (expr);             \
    if (!_s.ok()) return _s;               \
  } while (0)
#endif  // TFMPS_DEVICE_KERNELS

template <typename T>
class DenseOp : public DenseKernel<T> {
  using Base = DenseKernel<T>;

 public:
  explicit DenseOp(OpKernelConstruction* c) : Base(c) {
    OP_REQUIRES_OK(c, ReadListCount(c, this->type_string(), "num_bias", "bias", &num_bias_));
  }

  void Compute(OpKernelContext* ctx) override {
    const std::string& op = this->type_string();
    const Tensor& x = ctx->input(kFwdX);
    const Tensor& w = ctx->input(kFwdKernel);
    OP_REQUIRES_OK(ctx, this->AtLeast2D(ctx, kFwdX, "x", kXLayout));
    OP_REQUIRES_OK(ctx, this->Kernel2D(ctx, kFwdKernel));
    const DenseDims d{Rows(x.shape()), x.dim_size(x.dims() - 1), w.dim_size(1)};
    OP_REQUIRES(ctx, w.dim_size(0) == d.in,
                absl::InvalidArgumentError(absl::StrCat(
                    op, ": x's last dimension must equal the kernel's first (in_features): expected ", w.dim_size(0),
                    ", got ", d.in, " (x ", x.shape().DebugString(), ", kernel ", w.shape().DebugString(), ")")));
    const Tensor* bias = nullptr;
    if (num_bias_ == 1) {
      bias = &ctx->input(kFwdBias);
      OP_REQUIRES(ctx, bias->dims() == 1 && bias->dim_size(0) == d.out,
                  absl::InvalidArgumentError(absl::StrCat(
                      op, ": bias must be 1-D [units] with one value per unit (the kernel's last dimension): expected [",
                      d.out, "], got shape ", bias->shape().DebugString())));
    }
    OP_REQUIRES_OK(ctx, this->Sizes(d));
    TensorShape out_shape = x.shape();
    out_shape.set_dim(out_shape.dims() - 1, d.out);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &y));
    if (y->NumElements() == 0) return;
    const DenseConfig cfg = this->Config();
    const DenseForwardArgs args{Base::Ptr(x), Base::Ptr(w), bias != nullptr ? Base::Ptr(*bias) : nullptr, Base::Ptr(y)};
    this->Dispatch(
        ctx,
        [&]() -> BackendStatus {
#ifdef TFMPS_DEVICE_KERNELS
          if (d.in == 0) return BackendStatus::Unsupported("no inputs");
          float* out = y->flat<float>().data();
          TFMPS_DENSE_RETURN_IF_NOT_OK(device_ops::MatMul(device_ops::Elem::kF32, args.x, args.kernel, out, d.rows,
                                                          d.out, d.in, false, false));
          if (bias != nullptr) {
            TFMPS_DENSE_RETURN_IF_NOT_OK(device_ops::Binary(TFMPS_BINARY_ADD, device_ops::Elem::kF32, out,
                                                            args.bias, out, RowBroadcast(d.rows, d.out)));
          }
          if (cfg.activation == Activation::kRelu) {
            TFMPS_DENSE_RETURN_IF_NOT_OK(
                device_ops::Unary(TFMPS_UNARY_RELU, device_ops::Elem::kF32, out, out, d.rows * d.out));
          }
          return BackendStatus::Ok();
#else
          return BackendStatus::Unsupported("CPU device");
#endif
        },
        [&] {
          this->RunCpu(ctx, DenseForwardCpuWorkspace(d, cfg),
                       [&](const CpuContext& cpu) { DenseForwardCpu(d, cfg, args, cpu); });
        });
  }

 private:
  int64_t num_bias_ = 0;
};

template <typename T>
class DenseBackpropInputOp : public DenseKernel<T> {
  using Base = DenseKernel<T>;

 public:
  explicit DenseBackpropInputOp(OpKernelConstruction* c) : Base(c) {
    OP_REQUIRES_OK(c, ReadNumY(c, this->type_string(), this->attrs_, &num_y_));
  }

  void Compute(OpKernelContext* ctx) override {
    const std::string& op = this->type_string();
    const Tensor& dy = ctx->input(kBinDy);
    const Tensor& w = ctx->input(kBinKernel);
    OP_REQUIRES_OK(ctx, this->AtLeast2D(ctx, kBinDy, "dy", "[..., units]"));
    OP_REQUIRES_OK(ctx, this->Kernel2D(ctx, kBinKernel));
    const DenseDims d{Rows(dy.shape()), w.dim_size(0), w.dim_size(1)};
    OP_REQUIRES(ctx, dy.dim_size(dy.dims() - 1) == d.out,
                absl::InvalidArgumentError(absl::StrCat(
                    op, ": dy's last dimension must equal the kernel's last (units): expected ", d.out, ", got ",
                    dy.dim_size(dy.dims() - 1), " (dy ", dy.shape().DebugString(), ", kernel ",
                    w.shape().DebugString(), ")")));
    const Tensor* y = nullptr;
    if (num_y_ == 1) {
      OP_REQUIRES_OK(ctx, this->SameShape(ctx, kBinY, "y", dy.shape(), "dy"));
      y = &ctx->input(kBinY);
    }
    OP_REQUIRES_OK(ctx, this->Sizes(d));
    TensorShape out_shape = dy.shape();
    out_shape.set_dim(out_shape.dims() - 1, d.in);
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &dx));
    if (dx->NumElements() == 0) return;
    const DenseConfig cfg = this->Config();
    const DenseBackpropInputArgs args{Base::Ptr(dy), Base::Ptr(w), y != nullptr ? Base::Ptr(*y) : nullptr,
                                      Base::Ptr(dx)};
    this->Dispatch(
        ctx,
        [&]() -> BackendStatus {
#ifdef TFMPS_DEVICE_KERNELS
          if (d.out == 0) return BackendStatus::Unsupported("no units");
          Tensor temp;
          const float* g = nullptr;
          TFMPS_DENSE_RETURN_IF_NOT_OK(MaskOnDevice(ctx, dy, y, d.rows, d.out, &temp, &g));
          return device_ops::MatMul(device_ops::Elem::kF32, g, args.kernel, dx->flat<float>().data(), d.rows, d.in,
                                    d.out, false, true);
#else
          return BackendStatus::Unsupported("CPU device");
#endif
        },
        [&] {
          this->RunCpu(ctx, DenseBackpropInputCpuWorkspace(d, cfg),
                       [&](const CpuContext& cpu) { DenseBackpropInputCpu(d, cfg, args, cpu); });
        });
  }

 private:
  int64_t num_y_ = 0;
};

template <typename T>
class DenseBackpropKernelOp : public DenseKernel<T> {
  using Base = DenseKernel<T>;

 public:
  explicit DenseBackpropKernelOp(OpKernelConstruction* c) : Base(c) {
    OP_REQUIRES_OK(c, ReadNumY(c, this->type_string(), this->attrs_, &num_y_));
    OP_REQUIRES_OK(c, ReadListCount(c, this->type_string(), "num_bias", "dbias", &num_bias_));
  }

  void Compute(OpKernelContext* ctx) override {
    const std::string& op = this->type_string();
    const Tensor& x = ctx->input(kBkX);
    const Tensor& dy = ctx->input(kBkDy);
    OP_REQUIRES_OK(ctx, this->AtLeast2D(ctx, kBkX, "x", kXLayout));
    OP_REQUIRES_OK(ctx, this->AtLeast2D(ctx, kBkDy, "dy", "[..., units]"));
    TensorShape lead_x = x.shape(), lead_dy = dy.shape();
    lead_x.RemoveLastDims(1);
    lead_dy.RemoveLastDims(1);
    OP_REQUIRES(ctx, lead_x == lead_dy,
                absl::InvalidArgumentError(absl::StrCat(
                    op, ": dy's leading dimensions must be x's (one gradient row per input row): expected ",
                    lead_x.DebugString(), ", got ", lead_dy.DebugString(), " (x ", x.shape().DebugString(), ", dy ",
                    dy.shape().DebugString(), ")")));
    const Tensor* y = nullptr;
    if (num_y_ == 1) {
      OP_REQUIRES_OK(ctx, this->SameShape(ctx, kBkY, "y", dy.shape(), "dy"));
      y = &ctx->input(kBkY);
    }
    const DenseDims d{Rows(x.shape()), x.dim_size(x.dims() - 1), dy.dim_size(dy.dims() - 1)};
    OP_REQUIRES_OK(ctx, this->Sizes(d));
    Tensor* dw = nullptr;
    Tensor* db = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.in, d.out}), &dw));
    if (num_bias_ == 1) OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({d.out}), &db));
    if (d.out == 0) return;
    const DenseConfig cfg = this->Config();
    const DenseBackpropKernelArgs args{Base::Ptr(x), Base::Ptr(dy), y != nullptr ? Base::Ptr(*y) : nullptr,
                                       Base::Ptr(dw), db != nullptr ? Base::Ptr(db) : nullptr};
    this->Dispatch(
        ctx,
        [&]() -> BackendStatus {
#ifdef TFMPS_DEVICE_KERNELS
          if (d.rows == 0) return BackendStatus::Unsupported("no rows");
          Tensor temp;
          const float* g = nullptr;
          TFMPS_DENSE_RETURN_IF_NOT_OK(MaskOnDevice(ctx, dy, y, d.rows, d.out, &temp, &g));
          if (d.in > 0) {
            TFMPS_DENSE_RETURN_IF_NOT_OK(device_ops::MatMul(device_ops::Elem::kF32, args.x, g,
                                                            dw->flat<float>().data(), d.in, d.out, d.rows, true,
                                                            false));
          }
          if (db != nullptr) {
            TFMPS_DENSE_RETURN_IF_NOT_OK(
                device_ops::ReduceSum(device_ops::Elem::kF32, g, db->flat<float>().data(), 1, d.rows, d.out, 1.0f));
          }
          return BackendStatus::Ok();
#else
          return BackendStatus::Unsupported("CPU device");
#endif
        },
        [&] {
          this->RunCpu(ctx, DenseBackpropKernelCpuWorkspace(d, cfg, db != nullptr),
                       [&](const CpuContext& cpu) { DenseBackpropKernelCpu(d, cfg, args, cpu); });
        });
  }

 private:
  int64_t num_y_ = 0, num_bias_ = 0;
};

#ifndef TFMPS_DEVICE_KERNELS
#define TFMPS_REGISTER_DENSE(T)                                                                            \
  REGISTER_KERNEL_BUILDER(Name("MpsDense").Device(DEVICE_CPU).TypeConstraint<T>("T"), DenseOp<T>);         \
  REGISTER_KERNEL_BUILDER(Name("MpsDenseBackpropInput").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
                          DenseBackpropInputOp<T>);                                                        \
  REGISTER_KERNEL_BUILDER(Name("MpsDenseBackpropKernel").Device(DEVICE_CPU).TypeConstraint<T>("T"),        \
                          DenseBackpropKernelOp<T>);
TFMPS_REGISTER_DENSE(float)
TFMPS_REGISTER_DENSE(Eigen::half)
#undef TFMPS_REGISTER_DENSE
#endif  // TFMPS_DEVICE_KERNELS

}  // namespace

#ifdef TFMPS_DEVICE_KERNELS
namespace {
template <template <typename> class Kernel, typename T>
void RegisterOne(const char* name, const char* type) {
  tensorflow::register_kernel::Name b(name);
  b.Device(type).TypeConstraint<T>("T");
  new tensorflow::kernel_factory::OpKernelRegistrar(
      b.Build(), name, [](OpKernelConstruction* c) -> OpKernel* { return new Kernel<T>(c); });
}
template <template <typename> class Kernel>
void RegisterBoth(const char* name, const char* type) {
  RegisterOne<Kernel, float>(name, type);
  RegisterOne<Kernel, Eigen::half>(name, type);
}
}  // namespace

// The device's dense kernels, float32 and float16 (runs from the device library's static
// initialization: nothing here may depend on this file's own initializers).
void RegisterDeviceKernels(const char* type) {
  RegisterBoth<DenseOp>("MpsDense", type);
  RegisterBoth<DenseBackpropInputOp>("MpsDenseBackpropInput", type);
  RegisterBoth<DenseBackpropKernelOp>("MpsDenseBackpropKernel", type);
}
#endif  // TFMPS_DEVICE_KERNELS

}  // namespace dense
}  // namespace tfmps
