// TensorFlow glue of the pool family: op definitions with shape functions, validation of
// every input and attribute, and dispatch to the backends declared in pool.h.
//
//   MpsMaxPool2D(input [N,H,W,C]) -> output [N,OH,OW,C]
//   MpsAvgPool2D(input [N,H,W,C]) -> output [N,OH,OW,C]
//   MpsMaxPool2DGrad(input [N,H,W,C], grad [N,OH,OW,C]) -> [N,H,W,C]   (arg-max from input)
//   MpsAvgPool2DGrad(input_sizes (4 x int32), grad [N,OH,OW,C]) -> [N,H,W,C]
//   MpsMaxPool2DGradGrad(input [N,H,W,C], grad [N,H,W,C]) -> [N,OH,OW,C]  (gathers grad
//       at each window's arg-max: the derivative of MpsMaxPool2DGrad with respect to its grad)
//   MpsMaxPool2DWithArgmax(input) -> output, argmax (uint8 tap counters, [N,OH,OW,C])
//   MpsMaxPool2DGradWithArgmax(input, argmax, grad) -> [N,H,W,C]  (input: shape only)
//
// Attributes: ksize and strides as [h, w] or TF's NHWC [1, h, w, 1], each in
// [1, 2^31 - 1]; padding SAME or VALID (TF's rules, pool.h). T is float32 or float16;
// float16 is computed in float32 (an exact copy of the inputs) and rounded once.
// Compiled twice: into the op library, and with TFMPS_DEVICE_KERNELS into the device's.
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "ops/common/tf_glue.h"
#include "ops/pool/pool.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#ifdef TFMPS_DEVICE_KERNELS
#include "ops/device/device_kernels_glue.h"
#include "ops/pool/pool_metal.h"
#endif

namespace tfmps {
namespace pool {
namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

constexpr char kAttrT[] = "T: {half, float}";
constexpr char kAttrKsize[] = "ksize: list(int)";
constexpr char kAttrStrides[] = "strides: list(int)";
constexpr char kAttrPadding[] = "padding: {'SAME', 'VALID'}";

// Named inputs.
enum ForwardInput { kFwdInput };
enum MaxGradInput { kMgInput, kMgGrad };
enum AvgGradInput { kAgSizes, kAgGrad };
enum ArgmaxGradInput { kAmInput, kAmArgmax, kAmGrad };

const char kLayout[] = "[batch, height, width, channels] (NHWC)";

struct PoolAttrs {
  int64_t k_h = 1, k_w = 1, stride_h = 1, stride_w = 1;
  Padding padding = Padding::kValid;
};

std::string ListString(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) absl::StrAppend(&out, i ? ", " : "", v[i]);
  return out + "]";
}

// ksize or strides: [h, w], or [1, h, w, 1] (NHWC); entries in [1, 2^31 - 1].
absl::Status HwList(const std::string& op, const char* name, const std::vector<int64_t>& v, int64_t* h, int64_t* w) {
  if (v.size() != 2 && v.size() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must have 2 elements [height, width] or 4 [1, ",
                                                   "height, width, 1] (NHWC), got ", v.size(), ": ", ListString(v)));
  }
  if (v.size() == 4 && (v[0] != 1 || v[3] != 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " in the batch and channel dimensions must be 1 (pooling is 2-D), got ", ListString(v)));
  }
  const int64_t vh = v.size() == 4 ? v[1] : v[0], vw = v.size() == 4 ? v[2] : v[1];
  if (vh < 1 || vw < 1 || vh > INT32_MAX || vw > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name,
                                                   " must be in [1, 2147483647] in height and width, got ",
                                                   ListString(v)));
  }
  *h = vh;
  *w = vw;
  return absl::OkStatus();
}

template <typename Ctx>
absl::Status ReadAttrs(Ctx* c, const std::string& op, PoolAttrs* a) {
  std::vector<int64_t> ksize, strides;
  std::string padding;
  TF_RETURN_IF_ERROR(c->GetAttr("ksize", &ksize));
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  TF_RETURN_IF_ERROR(HwList(op, "ksize", ksize, &a->k_h, &a->k_w));
  TF_RETURN_IF_ERROR(HwList(op, "strides", strides, &a->stride_h, &a->stride_w));
  a->padding = padding == "SAME" ? Padding::kSame : Padding::kValid;
  return absl::OkStatus();
}

std::string DimsString(const int64_t d[4]) { return absl::StrCat("[", d[0], ",", d[1], ",", d[2], ",", d[3], "]"); }

Pool2DSpec MakeSpec(const PoolAttrs& a, const int64_t in[4]) {
  Pool2DSpec s;
  s.batch = in[0];
  s.in_h = in[1];
  s.in_w = in[2];
  s.channels = in[3];
  s.k_h = a.k_h;
  s.k_w = a.k_w;
  s.stride_h = a.stride_h;
  s.stride_w = a.stride_w;
  s.padding = a.padding;
  return s;
}

// ------------------------------------------------------------------ shape functions
absl::Status RequireRank4(InferenceContext* c, int index, const std::string& op, const char* name, ShapeHandle* out) {
  ShapeHandle s = c->input(index);
  if (c->RankKnown(s) && c->Rank(s) != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must be 4-D ", kLayout, ", got shape ", c->DebugString(s)));
  }
  return c->WithRank(s, 4, out);
}

absl::Status SpatialDim(InferenceContext* c, const std::string& op, const char* dim, int64_t in, int64_t k,
                        int64_t stride, Padding padding, DimensionHandle* out) {
  if (in == InferenceContext::kUnknownDim) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  int64_t before, after, size;
  const std::string err = ComputeOutputSize(dim, in, k, stride, padding, &before, &after, &size);
  if (!err.empty()) return absl::InvalidArgumentError(absl::StrCat(op, ": ", err));
  *out = c->MakeDim(size);
  return absl::OkStatus();
}

// The pooled shape of a (possibly partly known) input shape.
absl::Status PooledShape(InferenceContext* c, const std::string& op, ShapeHandle in, ShapeHandle* out) {
  PoolAttrs a;
  TF_RETURN_IF_ERROR(ReadAttrs(c, op, &a));
  DimensionHandle oh, ow;
  TF_RETURN_IF_ERROR(SpatialDim(c, op, "height", c->Value(c->Dim(in, 1)), a.k_h, a.stride_h, a.padding, &oh));
  TF_RETURN_IF_ERROR(SpatialDim(c, op, "width", c->Value(c->Dim(in, 2)), a.k_w, a.stride_w, a.padding, &ow));
  *out = c->MakeShape({c->Dim(in, 0), oh, ow, c->Dim(in, 3)});
  return absl::OkStatus();
}

template <const char* kOp>
absl::Status PoolShape(InferenceContext* c) {
  ShapeHandle in, out;
  TF_RETURN_IF_ERROR(RequireRank4(c, kFwdInput, kOp, "input", &in));
  TF_RETURN_IF_ERROR(PooledShape(c, kOp, in, &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

constexpr char kMaxPool[] = "MpsMaxPool2D";
constexpr char kAvgPool[] = "MpsAvgPool2D";
constexpr char kMaxPoolGrad[] = "MpsMaxPool2DGrad";
constexpr char kAvgPoolGrad[] = "MpsAvgPool2DGrad";
constexpr char kMaxPoolGradGrad[] = "MpsMaxPool2DGradGrad";
constexpr char kMaxPoolArgmax[] = "MpsMaxPool2DWithArgmax";
constexpr char kMaxPoolGradArgmax[] = "MpsMaxPool2DGradWithArgmax";

absl::Status MaxPoolArgmaxShape(InferenceContext* c) {
  ShapeHandle in, out;
  TF_RETURN_IF_ERROR(RequireRank4(c, kFwdInput, kMaxPoolArgmax, "input", &in));
  TF_RETURN_IF_ERROR(PooledShape(c, kMaxPoolArgmax, in, &out));
  c->set_output(0, out);
  c->set_output(1, out);
  return absl::OkStatus();
}

absl::Status MaxPoolGradArgmaxShape(InferenceContext* c) {
  ShapeHandle in, argmax, grad, pooled, merged;
  TF_RETURN_IF_ERROR(RequireRank4(c, kAmInput, kMaxPoolGradArgmax, "input", &in));
  TF_RETURN_IF_ERROR(RequireRank4(c, kAmArgmax, kMaxPoolGradArgmax, "argmax", &argmax));
  TF_RETURN_IF_ERROR(RequireRank4(c, kAmGrad, kMaxPoolGradArgmax, "grad", &grad));
  TF_RETURN_IF_ERROR(PooledShape(c, kMaxPoolGradArgmax, in, &pooled));
  for (auto [name, s] : {std::make_pair("argmax", argmax), std::make_pair("grad", grad)}) {
    if (!c->Merge(s, pooled, &merged).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(kMaxPoolGradArgmax, ": ", name,
                                                     " must have the pooled output's shape ", c->DebugString(pooled),
                                                     " for input ", c->DebugString(in), ", got ", c->DebugString(s)));
    }
  }
  c->set_output(0, in);
  return absl::OkStatus();
}

absl::Status MaxPoolGradShape(InferenceContext* c) {
  ShapeHandle in, grad, pooled;
  TF_RETURN_IF_ERROR(RequireRank4(c, kMgInput, kMaxPoolGrad, "input", &in));
  TF_RETURN_IF_ERROR(RequireRank4(c, kMgGrad, kMaxPoolGrad, "grad", &grad));
  TF_RETURN_IF_ERROR(PooledShape(c, kMaxPoolGrad, in, &pooled));
  ShapeHandle merged;
  if (!c->Merge(grad, pooled, &merged).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(kMaxPoolGrad, ": grad must have the pooled output's shape ",
                                                   c->DebugString(pooled), " for input ", c->DebugString(in),
                                                   ", got ", c->DebugString(grad)));
  }
  c->set_output(0, in);
  return absl::OkStatus();
}

absl::Status MaxPoolGradGradShape(InferenceContext* c) {
  ShapeHandle in, grad, pooled, merged;
  TF_RETURN_IF_ERROR(RequireRank4(c, kMgInput, kMaxPoolGradGrad, "input", &in));
  TF_RETURN_IF_ERROR(RequireRank4(c, kMgGrad, kMaxPoolGradGrad, "grad", &grad));
  if (!c->Merge(grad, in, &merged).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(kMaxPoolGradGrad, ": grad must have the input's shape ",
                                                   c->DebugString(in), ", got ", c->DebugString(grad)));
  }
  TF_RETURN_IF_ERROR(PooledShape(c, kMaxPoolGradGrad, merged, &pooled));
  c->set_output(0, pooled);
  return absl::OkStatus();
}

absl::Status AvgPoolGradShape(InferenceContext* c) {
  ShapeHandle sizes = c->input(kAgSizes), grad, out;
  if (c->RankKnown(sizes) && (c->Rank(sizes) != 1 || (c->ValueKnown(c->Dim(sizes, 0)) &&
                                                      c->Value(c->Dim(sizes, 0)) != 4))) {
    return absl::InvalidArgumentError(absl::StrCat(kAvgPoolGrad, ": input_sizes must be a 1-D tensor of 4 elements, got "
                                                   "shape ", c->DebugString(sizes)));
  }
  TF_RETURN_IF_ERROR(RequireRank4(c, kAgGrad, kAvgPoolGrad, "grad", &grad));
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(kAgSizes, &out));
  TF_RETURN_IF_ERROR(c->WithRank(out, 4, &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

}  // namespace

// -------------------------------------------------------------------------- ops
TFMPS_REGISTER_OP("MpsMaxPool2D")
    .Input("input: T")
    .Output("output: T")
    .Attr(kAttrT).Attr(kAttrKsize).Attr(kAttrStrides).Attr(kAttrPadding)
    .SetShapeFn(PoolShape<kMaxPool>)
    .Doc(R"doc(
2-D max pooling in NHWC (tf.nn.max_pool2d's geometry; NaN propagates). See
tf_mps.ops.pool.max_pool2d.
)doc");

TFMPS_REGISTER_OP("MpsAvgPool2D")
    .Input("input: T")
    .Output("output: T")
    .Attr(kAttrT).Attr(kAttrKsize).Attr(kAttrStrides).Attr(kAttrPadding)
    .SetShapeFn(PoolShape<kAvgPool>)
    .Doc(R"doc(
2-D average pooling in NHWC; padded cells are not counted (tf.nn.avg_pool2d). See
tf_mps.ops.pool.avg_pool2d.
)doc");

TFMPS_REGISTER_OP("MpsMaxPool2DGrad")
    .Input("input: T").Input("grad: T")
    .Output("output: T")
    .Attr(kAttrT).Attr(kAttrKsize).Attr(kAttrStrides).Attr(kAttrPadding)
    .SetShapeFn(MaxPoolGradShape)
    .Doc(R"doc(
Gradient of MpsMaxPool2D with respect to its input: each grad value goes to its window's
arg-max in input (on ties the first cell in scan order, as TF's CPU MaxPoolGrad).
)doc");

TFMPS_REGISTER_OP("MpsAvgPool2DGrad")
    .Input("input_sizes: int32").Input("grad: T")
    .Output("output: T")
    .Attr(kAttrT).Attr(kAttrKsize).Attr(kAttrStrides).Attr(kAttrPadding)
    .SetShapeFn(AvgPoolGradShape)
    .Doc("Gradient of MpsAvgPool2D with respect to its input (of shape input_sizes).");

TFMPS_REGISTER_OP("MpsMaxPool2DGradGrad")
    .Input("input: T").Input("grad: T")
    .Output("output: T")
    .Attr(kAttrT).Attr(kAttrKsize).Attr(kAttrStrides).Attr(kAttrPadding)
    .SetShapeFn(MaxPoolGradGradShape)
    .Doc(R"doc(
Derivative of MpsMaxPool2DGrad with respect to its grad, applied to grad (the input's
shape): grad gathered at each window's arg-max in input (TF's MaxPoolGradGrad).
)doc");

TFMPS_REGISTER_OP("MpsMaxPool2DWithArgmax")
    .Input("input: T")
    .Output("output: T").Output("argmax: uint8")
    .Attr(kAttrT).Attr(kAttrKsize).Attr(kAttrStrides).Attr(kAttrPadding)
    .SetShapeFn(MaxPoolArgmaxShape)
    .Doc(R"doc(
MpsMaxPool2D that also returns each output's arg-max as its tap counter in the window
(scan order over the cells inside the image), for MpsMaxPool2DGradWithArgmax. Windows of
at most 256 cells inside the image.
)doc");

TFMPS_REGISTER_OP("MpsMaxPool2DGradWithArgmax")
    .Input("input: T").Input("argmax: uint8").Input("grad: T")
    .Output("output: T")
    .Attr(kAttrT).Attr(kAttrKsize).Attr(kAttrStrides).Attr(kAttrPadding)
    .SetShapeFn(MaxPoolGradArgmaxShape)
    .Doc(R"doc(
MpsMaxPool2DGrad from the forward's arg-max (MpsMaxPool2DWithArgmax): the same result
without reading input's values (input gives the shape, and the second-order gradient).
)doc");

// -------------------------------------------------------------------------- kernels
namespace {

// The Metal backend of a kernel (pool_metal.h), or empty: none for it.
using MetalFn = std::function<BackendStatus()>;

// On the tf-mps device: `metal` (when given) with the kernel's stream as the Metal target,
// and the CPU backend after the stream's work when it declines (kUnsupported). Elsewhere
// the CPU backend.
void Dispatch(OpKernelContext* ctx, const MetalFn& metal, const std::function<void()>& cpu) {
#ifdef TFMPS_DEVICE_KERNELS
  device_glue::Run(
      ctx,
      [&] { return metal ? metal() : BackendStatus::Unsupported("pool: no Metal path for this op"); },
      cpu);
#else
  (void)metal;
  cpu();
#endif
}

// A float32 view of a float input: the tensor itself, or a float32 copy of a float16 one
// (made in Prepare, inside the backend call).
struct FloatIn {
  const Tensor* src = nullptr;
  Tensor temp;
  const float* data = nullptr;
};

// The backends' float32 result: the output itself, or a float32 temporary rounded into
// the float16 output at the end.
struct FloatOut {
  Tensor* dst = nullptr;
  Tensor temp;
  float* data = nullptr;
};

// Attributes and the checks every pool kernel shares. One class per op serves float32
// and float16 (the dtype is the tensors').
class PoolKernel : public OpKernel {
 public:
  explicit PoolKernel(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, ReadAttrs(c, type_string(), &attrs_)); }

 protected:
  absl::Status Rank4(OpKernelContext* ctx, int index, const char* name, int64_t dims[4]) const {
    const TensorShape& s = ctx->input(index).shape();
    if (s.dims() != 4) {
      return absl::InvalidArgumentError(
          absl::StrCat(type_string(), ": ", name, " must be 4-D ", kLayout, ", got shape ", s.DebugString()));
    }
    for (int i = 0; i < 4; ++i) dims[i] = s.dim_size(i);
    return absl::OkStatus();
  }

  absl::Status Geometry(const int64_t in[4], const char* in_name, Pool2DGeometry* g) const {
    const std::string err = ComputeGeometry(MakeSpec(attrs_, in), g);
    if (err.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(type_string(), ": ", err, " (", in_name, " ", DimsString(in), ")"));
  }

  // Input `index` must have shape `expected` (`what` says why).
  absl::Status CheckShape(OpKernelContext* ctx, int index, const char* name, const TensorShape& expected,
                          const std::string& what) const {
    const TensorShape& got = ctx->input(index).shape();
    if (got == expected) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(type_string(), ": ", name, " must have ", what, ", ",
                                                   expected.DebugString(), ", got ", got.DebugString()));
  }

  absl::Status In(OpKernelContext* ctx, int index, FloatIn* in) const {
    in->src = &ctx->input(index);
    if (in->src->dtype() == tensorflow::DT_FLOAT) {
      in->data = in->src->flat<float>().data();
      return absl::OkStatus();
    }
    TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_FLOAT, in->src->shape(), &in->temp));
    in->data = in->temp.flat<float>().data();
    return absl::OkStatus();
  }

  absl::Status Out(OpKernelContext* ctx, const TensorShape& shape, FloatOut* out) const {
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, shape, &out->dst));
    if (out->dst->dtype() == tensorflow::DT_FLOAT) {
      out->data = out->dst->flat<float>().data();
      return absl::OkStatus();
    }
    TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_FLOAT, shape, &out->temp));
    out->data = out->temp.flat<float>().data();
    return absl::OkStatus();
  }

  // Runs fn(parallel) on the backend with the float16 conversions around it.
  // On the tf-mps device `metal` runs first (float32 tensors only: the float16 path's
  // float32 copies are not in Metal buffers).
  void Run(OpKernelContext* ctx, std::vector<FloatIn*> ins, FloatOut* out,
           const std::function<void(const ParallelFor&)>& fn, const MetalFn& metal = nullptr) const {
    bool float32 = out->dst->dtype() == tensorflow::DT_FLOAT;
    for (FloatIn* in : ins) float32 = float32 && in->src->dtype() == tensorflow::DT_FLOAT;
    Dispatch(ctx, float32 ? metal : MetalFn(), [&] {
      const ParallelFor parallel = tfglue::CpuParallelFor(ctx);
      for (FloatIn* in : ins) {
        if (in->src->dtype() == tensorflow::DT_HALF) {
          HalfToFloatCpu(reinterpret_cast<const uint16_t*>(in->src->flat<Eigen::half>().data()),
                         in->temp.flat<float>().data(), in->src->NumElements(), parallel);
        }
      }
      fn(parallel);
      if (out->dst->dtype() == tensorflow::DT_HALF) {
        FloatToHalfCpu(out->data, reinterpret_cast<uint16_t*>(out->dst->flat<Eigen::half>().data()),
                       out->dst->NumElements(), parallel);
      }
    });
  }

  PoolAttrs attrs_;
};

template <bool kMax>
class PoolOp : public PoolKernel {
 public:
  using PoolKernel::PoolKernel;

  void Compute(OpKernelContext* ctx) override {
    int64_t in[4];
    OP_REQUIRES_OK(ctx, Rank4(ctx, kFwdInput, "input", in));
    Pool2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(in, "input", &g));
    FloatOut out;
    OP_REQUIRES_OK(ctx, Out(ctx, TensorShape({g.batch, g.out_h, g.out_w, g.channels}), &out));
    if (out.dst->NumElements() == 0) return;
    FloatIn x;
    OP_REQUIRES_OK(ctx, In(ctx, kFwdInput, &x));
    Run(
        ctx, {&x}, &out,
        [&](const ParallelFor& parallel) {
          if (kMax) {
            MaxPool2DCpu(g, x.data, out.data, parallel);
          } else {
            AvgPool2DCpu(g, x.data, out.data, parallel);
          }
        },
#ifdef TFMPS_DEVICE_KERNELS
        [&] { return kMax ? MaxPool2DMetal(g, x.data, out.data) : AvgPool2DMetal(g, x.data, out.data); });
#else
        nullptr);
#endif
  }
};

class MaxPoolGradOp : public PoolKernel {
 public:
  using PoolKernel::PoolKernel;

  void Compute(OpKernelContext* ctx) override {
    int64_t in[4], dy[4];
    OP_REQUIRES_OK(ctx, Rank4(ctx, kMgInput, "input", in));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kMgGrad, "grad", dy));
    Pool2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(in, "input", &g));
    OP_REQUIRES_OK(ctx, CheckShape(ctx, kMgGrad, "grad", TensorShape({g.batch, g.out_h, g.out_w, g.channels}),
                                   absl::StrCat("the pooled output's shape for input ", DimsString(in))));
    FloatOut out;
    OP_REQUIRES_OK(ctx, Out(ctx, TensorShape({in[0], in[1], in[2], in[3]}), &out));
    if (out.dst->NumElements() == 0) return;
    FloatIn x, d;
    OP_REQUIRES_OK(ctx, In(ctx, kMgInput, &x));
    OP_REQUIRES_OK(ctx, In(ctx, kMgGrad, &d));
    Run(
        ctx, {&x, &d}, &out,
        [&](const ParallelFor& parallel) { MaxPool2DGradCpu(g, x.data, d.data, out.data, parallel); },
#ifdef TFMPS_DEVICE_KERNELS
        [&] { return MaxPool2DGradMetal(g, x.data, d.data, out.data); });
#else
        nullptr);
#endif
  }
};

class MaxPoolGradGradOp : public PoolKernel {
 public:
  using PoolKernel::PoolKernel;

  void Compute(OpKernelContext* ctx) override {
    int64_t in[4], gg[4];
    OP_REQUIRES_OK(ctx, Rank4(ctx, kMgInput, "input", in));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kMgGrad, "grad", gg));
    Pool2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(in, "input", &g));
    OP_REQUIRES_OK(ctx, CheckShape(ctx, kMgGrad, "grad", ctx->input(kMgInput).shape(), "the input's shape"));
    FloatOut out;
    OP_REQUIRES_OK(ctx, Out(ctx, TensorShape({g.batch, g.out_h, g.out_w, g.channels}), &out));
    if (out.dst->NumElements() == 0) return;
    FloatIn x, d;
    OP_REQUIRES_OK(ctx, In(ctx, kMgInput, &x));
    OP_REQUIRES_OK(ctx, In(ctx, kMgGrad, &d));
    Run(ctx, {&x, &d}, &out,
        [&](const ParallelFor& parallel) { MaxPool2DGradGradCpu(g, x.data, d.data, out.data, parallel); });
  }
};

class AvgPoolGradOp : public PoolKernel {
 public:
  using PoolKernel::PoolKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& sizes = ctx->input(kAgSizes);
    OP_REQUIRES(ctx, tensorflow::TensorShapeUtils::IsVector(sizes.shape()) && sizes.NumElements() == 4,
                absl::InvalidArgumentError(absl::StrCat(type_string(),
                                                        ": input_sizes must be a 1-D tensor of 4 elements, got shape ",
                                                        sizes.shape().DebugString())));
    int64_t in[4], dy[4];
    const auto v = sizes.vec<int32_t>();
    for (int i = 0; i < 4; ++i) in[i] = v(i);
    OP_REQUIRES(ctx, in[0] >= 0 && in[1] >= 0 && in[2] >= 0 && in[3] >= 0,
                absl::InvalidArgumentError(absl::StrCat(type_string(), ": input_sizes must be >= 0, got ",
                                                        DimsString(in))));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kAgGrad, "grad", dy));
    Pool2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(in, "input_sizes", &g));
    OP_REQUIRES_OK(ctx, CheckShape(ctx, kAgGrad, "grad", TensorShape({g.batch, g.out_h, g.out_w, g.channels}),
                                   absl::StrCat("the pooled output's shape for input_sizes ", DimsString(in))));
    TensorShape shape;
    OP_REQUIRES_OK(ctx, TensorShape::BuildTensorShape({in[0], in[1], in[2], in[3]}, &shape));
    FloatOut out;
    OP_REQUIRES_OK(ctx, Out(ctx, shape, &out));
    if (out.dst->NumElements() == 0) return;
    FloatIn d;
    OP_REQUIRES_OK(ctx, In(ctx, kAgGrad, &d));
    Run(
        ctx, {&d}, &out, [&](const ParallelFor& parallel) { AvgPool2DGradCpu(g, d.data, out.data, parallel); },
#ifdef TFMPS_DEVICE_KERNELS
        [&] { return AvgPool2DGradMetal(g, d.data, out.data); });
#else
        nullptr);
#endif
  }
};

// The arg-max is a uint8 tap counter: windows of at most 256 cells inside the image.
absl::Status CheckArgmaxFits(const OpKernel& k, const Pool2DGeometry& g) {
  if (ArgmaxFits(g)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      k.type_string(), ": ksize: a window covers more than 256 cells of the input (", std::min(g.k_h, g.in_h), "x",
      std::min(g.k_w, g.in_w), "), more than a uint8 arg-max can name; use MpsMaxPool2D and MpsMaxPool2DGrad"));
}

class MaxPoolArgmaxOp : public PoolKernel {
 public:
  using PoolKernel::PoolKernel;

  void Compute(OpKernelContext* ctx) override {
    int64_t in[4];
    OP_REQUIRES_OK(ctx, Rank4(ctx, kFwdInput, "input", in));
    Pool2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(in, "input", &g));
    OP_REQUIRES_OK(ctx, CheckArgmaxFits(*this, g));
    const TensorShape shape({g.batch, g.out_h, g.out_w, g.channels});
    FloatOut out;
    OP_REQUIRES_OK(ctx, Out(ctx, shape, &out));
    Tensor* argmax = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, shape, &argmax));
    if (out.dst->NumElements() == 0) return;
    FloatIn x;
    OP_REQUIRES_OK(ctx, In(ctx, kFwdInput, &x));
    uint8_t* a = argmax->flat<uint8_t>().data();
    Run(ctx, {&x}, &out, [&](const ParallelFor& parallel) { MaxPool2DArgmaxCpu(g, x.data, out.data, a, parallel); });
  }
};

class MaxPoolGradArgmaxOp : public PoolKernel {
 public:
  using PoolKernel::PoolKernel;

  void Compute(OpKernelContext* ctx) override {
    int64_t in[4], am[4], dy[4];
    OP_REQUIRES_OK(ctx, Rank4(ctx, kAmInput, "input", in));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kAmArgmax, "argmax", am));
    OP_REQUIRES_OK(ctx, Rank4(ctx, kAmGrad, "grad", dy));
    Pool2DGeometry g;
    OP_REQUIRES_OK(ctx, Geometry(in, "input", &g));
    OP_REQUIRES_OK(ctx, CheckArgmaxFits(*this, g));
    const TensorShape pooled({g.batch, g.out_h, g.out_w, g.channels});
    const std::string what = absl::StrCat("the pooled output's shape for input ", DimsString(in));
    OP_REQUIRES_OK(ctx, CheckShape(ctx, kAmArgmax, "argmax", pooled, what));
    OP_REQUIRES_OK(ctx, CheckShape(ctx, kAmGrad, "grad", pooled, what));
    FloatOut out;
    OP_REQUIRES_OK(ctx, Out(ctx, TensorShape({in[0], in[1], in[2], in[3]}), &out));
    if (out.dst->NumElements() == 0) return;
    FloatIn d;
    OP_REQUIRES_OK(ctx, In(ctx, kAmGrad, &d));
    const uint8_t* a = ctx->input(kAmArgmax).flat<uint8_t>().data();
    Run(ctx, {&d}, &out, [&](const ParallelFor& parallel) { MaxPool2DGradArgmaxCpu(g, a, d.data, out.data, parallel); });
  }
};

template <typename Kernel>
OpKernel* Make(OpKernelConstruction* c) {
  return new Kernel(c);
}

#ifndef TFMPS_DEVICE_KERNELS
#define TFMPS_REGISTER_POOL(NAME, KERNEL)                                                                          \
  REGISTER_KERNEL_BUILDER(Name(NAME).Device(tensorflow::DEVICE_CPU).TypeConstraint<float>("T"), KERNEL);          \
  REGISTER_KERNEL_BUILDER(Name(NAME).Device(tensorflow::DEVICE_CPU).TypeConstraint<Eigen::half>("T"), KERNEL)
TFMPS_REGISTER_POOL("MpsMaxPool2D", PoolOp<true>);
TFMPS_REGISTER_POOL("MpsAvgPool2D", PoolOp<false>);
TFMPS_REGISTER_POOL("MpsMaxPool2DGrad", MaxPoolGradOp);
TFMPS_REGISTER_POOL("MpsMaxPool2DGradGrad", MaxPoolGradGradOp);
TFMPS_REGISTER_POOL("MpsMaxPool2DWithArgmax", MaxPoolArgmaxOp);
TFMPS_REGISTER_POOL("MpsMaxPool2DGradWithArgmax", MaxPoolGradArgmaxOp);
#undef TFMPS_REGISTER_POOL
REGISTER_KERNEL_BUILDER(
    Name("MpsAvgPool2DGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<float>("T").HostMemory("input_sizes"),
    AvgPoolGradOp);
REGISTER_KERNEL_BUILDER(
    Name("MpsAvgPool2DGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<Eigen::half>("T").HostMemory("input_sizes"),
    AvgPoolGradOp);
#endif  // TFMPS_DEVICE_KERNELS

}  // namespace

#ifdef TFMPS_DEVICE_KERNELS
namespace {
template <typename T>
void RegisterOne(const char* name, const char* type, bool host_sizes, OpKernel* (*factory)(OpKernelConstruction*)) {
  tensorflow::register_kernel::Name b(name);
  b.Device(type).TypeConstraint<T>("T");
  // input_sizes is read by the host: TensorFlow copies it there first.
  if (host_sizes) b.HostMemory("input_sizes");
  new tensorflow::kernel_factory::OpKernelRegistrar(b.Build(), name, factory);
}
template <typename Kernel>
void RegisterBoth(const char* name, const char* type, bool host_sizes = false) {
  RegisterOne<float>(name, type, host_sizes, &Make<Kernel>);
  RegisterOne<Eigen::half>(name, type, host_sizes, &Make<Kernel>);
}
}  // namespace

// Runs from the device kernels library's static initialization: only string literals
// and functions here, nothing dynamically initialized.
void RegisterDeviceKernels(const char* type) {
  RegisterBoth<PoolOp<true>>("MpsMaxPool2D", type);
  RegisterBoth<PoolOp<false>>("MpsAvgPool2D", type);
  RegisterBoth<MaxPoolGradOp>("MpsMaxPool2DGrad", type);
  RegisterBoth<MaxPoolGradGradOp>("MpsMaxPool2DGradGrad", type);
  RegisterBoth<MaxPoolArgmaxOp>("MpsMaxPool2DWithArgmax", type);
  RegisterBoth<MaxPoolGradArgmaxOp>("MpsMaxPool2DGradWithArgmax", type);
  RegisterBoth<AvgPoolGradOp>("MpsAvgPool2DGrad", type, true);
}
#endif  // TFMPS_DEVICE_KERNELS

}  // namespace pool
}  // namespace tfmps
