// TF glue of batch and instance normalization: op definitions with shape functions,
// validation of every input and attribute, and dispatch to the backends (norm.h).
// Compiled twice: into the op library, and with TFMPS_DEVICE_KERNELS into the device's.
//
//   MpsBatchNorm(x [..., C], gamma [C], beta [C], mean [C], variance [C])
//       -> y [..., C], batch_mean [C], batch_variance [C], inv_std [C]
//     is_training: batch statistics over every axis but the last (mean and variance
//     inputs unused: [0] or [C]); batch_variance is biased (tf.nn.moments', Keras's),
//     not the Bessel-corrected value FusedBatchNormV3 returns. Inference: the given
//     mean and variance (copied to batch_mean/batch_variance).
//   MpsBatchNormGrad(dy, x, gamma, mean, inv_std, mean_backprop, variance_backprop)
//       -> dx, gamma_backprop [C], beta_backprop [C]
//     mean_backprop/variance_backprop: gradients of batch_mean/batch_variance ([C], or
//     [0] for none), used in training only.
//   MpsInstanceNorm(x [N, spatial..., C], gamma [C], beta [C])
//       -> y, mean [N, C], variance [N, C], inv_std [N, C]
//   MpsInstanceNormGrad(dy, x, gamma, mean, inv_std, mean_backprop, variance_backprop)
//       -> dx, gamma_backprop [C], beta_backprop [C]
// x, y, dy, dx: float32 or float16 (T); everything else float32 (FusedBatchNormV3's U).
// Empty statistics (no rows: an empty batch, or an empty image for instance norm) are
// NaN, as FusedBatchNormV3 gives; their gradients are zero.
#include <cmath>
#include <string>
#include <vector>

#include "ops/common/tf_glue.h"
#include "ops/norm/norm.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#ifdef TFMPS_DEVICE_KERNELS
#include "ops/device/device_kernels_glue.h"
#include "ops/norm/norm_metal.h"
#endif

namespace tfmps {
namespace norm {
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
constexpr char kAttrEpsilon[] = "epsilon: float = 0.001";

// Named inputs.
enum ForwardInput { kFwdX, kFwdGamma, kFwdBeta, kFwdMean, kFwdVariance };
enum GradInput { kGradDy, kGradX, kGradGamma, kGradMean, kGradInvStd, kGradMeanBackprop, kGradVarianceBackprop };

// Batch norm and instance norm share every kernel; what differs is the view of x.
struct Kind {
  bool instance;
  int min_rank;
  const char* x_layout;
  const char* stats_layout;
};
constexpr Kind kBatch{false, 2, "[..., channels] (channels last)", "[channels]"};
constexpr Kind kInstance{true, 3, "[batch, spatial..., channels] (channels last)", "[batch, channels]"};

absl::Status EpsilonStatus(const std::string& op, float epsilon) {
  if (std::isfinite(epsilon) && epsilon > 0.0f) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": epsilon must be positive and finite, got ", epsilon));
}

// ---------------------------------------------------------------- shape functions
absl::Status XShape(InferenceContext* c, const std::string& op, const Kind& kind, int index, const char* name,
                    ShapeHandle* x) {
  ShapeHandle s = c->input(index);
  if (c->RankKnown(s) && c->Rank(s) < kind.min_rank) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must have rank >= ", kind.min_rank, " ",
                                                   kind.x_layout, ", got shape ", c->DebugString(s)));
  }
  return c->WithRankAtLeast(s, kind.min_rank, x);
}

// A per-channel [C] input: merged with the channels of x, or the kernel's message.
absl::Status ChannelVector(InferenceContext* c, const std::string& op, int index, const char* name,
                           DimensionHandle channels, bool may_be_empty, DimensionHandle* merged) {
  ShapeHandle s = c->input(index);
  if (!c->RankKnown(s)) return absl::OkStatus();
  const bool empty = may_be_empty && c->Rank(s) == 1 && c->ValueKnown(c->Dim(s, 0)) && c->Value(c->Dim(s, 0)) == 0;
  if (empty) return absl::OkStatus();
  DimensionHandle out;
  if (c->Rank(s) != 1 || !c->Merge(c->Dim(s, 0), channels, &out).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name,
                                                   " must be 1-D [channels] with one value per channel of x (",
                                                   c->DebugString(channels), "), got shape ", c->DebugString(s)));
  }
  *merged = out;
  return absl::OkStatus();
}

// Statistics input [C] (batch) or [N, C] (instance) against x's shape.
absl::Status StatsInput(InferenceContext* c, const std::string& op, const Kind& kind, int index, const char* name,
                        ShapeHandle stats, bool may_be_empty) {
  ShapeHandle s = c->input(index);
  if (!c->RankKnown(s) || !c->RankKnown(stats)) return absl::OkStatus();
  if (may_be_empty && c->Rank(s) == 1 && c->ValueKnown(c->Dim(s, 0)) && c->Value(c->Dim(s, 0)) == 0) {
    return absl::OkStatus();
  }
  ShapeHandle merged;
  if (!c->Merge(s, stats, &merged).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must have the statistics' shape ",
                                                   kind.stats_layout, " = ", c->DebugString(stats),
                                                   may_be_empty ? " (or [0] for none)" : "", ", got shape ",
                                                   c->DebugString(s)));
  }
  return absl::OkStatus();
}

ShapeHandle StatsShape(InferenceContext* c, const Kind& kind, ShapeHandle x) {
  if (!c->RankKnown(x)) return kind.instance ? c->Matrix(c->UnknownDim(), c->UnknownDim()) : c->Vector(c->UnknownDim());
  const int rank = c->Rank(x);
  DimensionHandle channels = c->Dim(x, rank - 1);
  return kind.instance ? c->Matrix(c->Dim(x, 0), channels) : c->Vector(channels);
}

DimensionHandle Channels(InferenceContext* c, ShapeHandle x) {
  return c->RankKnown(x) ? c->Dim(x, c->Rank(x) - 1) : c->UnknownDim();
}

absl::Status ForwardShape(InferenceContext* c, const std::string& op, const Kind& kind) {
  float epsilon = 0.0f;
  TF_RETURN_IF_ERROR(c->GetAttr("epsilon", &epsilon));
  TF_RETURN_IF_ERROR(EpsilonStatus(op, epsilon));
  bool training = true;
  if (!kind.instance) TF_RETURN_IF_ERROR(c->GetAttr("is_training", &training));
  ShapeHandle x;
  TF_RETURN_IF_ERROR(XShape(c, op, kind, kFwdX, "x", &x));
  DimensionHandle channels = Channels(c, x);
  TF_RETURN_IF_ERROR(ChannelVector(c, op, kFwdGamma, "gamma", channels, false, &channels));
  TF_RETURN_IF_ERROR(ChannelVector(c, op, kFwdBeta, "beta", channels, false, &channels));
  if (!kind.instance) {
    TF_RETURN_IF_ERROR(ChannelVector(c, op, kFwdMean, "mean", channels, training, &channels));
    TF_RETURN_IF_ERROR(ChannelVector(c, op, kFwdVariance, "variance", channels, training, &channels));
  }
  c->set_output(0, x);
  ShapeHandle stats = kind.instance ? c->Matrix(c->RankKnown(x) ? c->Dim(x, 0) : c->UnknownDim(), channels)
                                    : c->Vector(channels);
  for (int i = 1; i < 4; ++i) c->set_output(i, stats);
  return absl::OkStatus();
}

absl::Status GradShape(InferenceContext* c, const std::string& op, const Kind& kind) {
  ShapeHandle dy, x;
  TF_RETURN_IF_ERROR(XShape(c, op, kind, kGradDy, "dy", &dy));
  TF_RETURN_IF_ERROR(XShape(c, op, kind, kGradX, "x", &x));
  ShapeHandle merged;
  if (!c->Merge(dy, x, &merged).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": dy must have the shape of x, ", c->DebugString(x),
                                                   ", got ", c->DebugString(dy)));
  }
  DimensionHandle channels = Channels(c, merged);
  TF_RETURN_IF_ERROR(ChannelVector(c, op, kGradGamma, "gamma", channels, false, &channels));
  ShapeHandle stats = StatsShape(c, kind, merged);
  TF_RETURN_IF_ERROR(StatsInput(c, op, kind, kGradMean, "mean", stats, false));
  TF_RETURN_IF_ERROR(StatsInput(c, op, kind, kGradInvStd, "inv_std", stats, false));
  TF_RETURN_IF_ERROR(StatsInput(c, op, kind, kGradMeanBackprop, "mean_backprop", stats, true));
  TF_RETURN_IF_ERROR(StatsInput(c, op, kind, kGradVarianceBackprop, "variance_backprop", stats, true));
  c->set_output(0, merged);
  c->set_output(1, c->Vector(channels));
  c->set_output(2, c->Vector(channels));
  return absl::OkStatus();
}

}  // namespace

// -------------------------------------------------------------------------- ops
TFMPS_REGISTER_OP("MpsBatchNorm")
    .Input("x: T").Input("gamma: float").Input("beta: float").Input("mean: float").Input("variance: float")
    .Output("y: T").Output("batch_mean: float").Output("batch_variance: float").Output("inv_std: float")
    .Attr(kAttrT).Attr(kAttrEpsilon).Attr("is_training: bool = true")
    .SetShapeFn([](InferenceContext* c) { return ForwardShape(c, "MpsBatchNorm", kBatch); })
    .Doc(R"doc(
Batch normalization over every axis but the last (channels). Training: batch statistics
(biased variance); inference: the given mean and variance. inv_std = rsqrt(var + epsilon).
See tf_mps.ops.norm.batch_norm.
)doc");

TFMPS_REGISTER_OP("MpsBatchNormGrad")
    .Input("dy: T").Input("x: T").Input("gamma: float").Input("mean: float").Input("inv_std: float")
    .Input("mean_backprop: float").Input("variance_backprop: float")
    .Output("dx: T").Output("gamma_backprop: float").Output("beta_backprop: float")
    .Attr(kAttrT).Attr("is_training: bool = true")
    .SetShapeFn([](InferenceContext* c) { return GradShape(c, "MpsBatchNormGrad", kBatch); })
    .Doc("Gradient of MpsBatchNorm: dx (through the batch statistics in training), dgamma, dbeta.");

TFMPS_REGISTER_OP("MpsInstanceNorm")
    .Input("x: T").Input("gamma: float").Input("beta: float")
    .Output("y: T").Output("mean: float").Output("variance: float").Output("inv_std: float")
    .Attr(kAttrT).Attr(kAttrEpsilon)
    .SetShapeFn([](InferenceContext* c) { return ForwardShape(c, "MpsInstanceNorm", kInstance); })
    .Doc("Instance normalization: statistics per sample and channel over the spatial axes. "
         "See tf_mps.ops.norm.instance_norm.");

TFMPS_REGISTER_OP("MpsInstanceNormGrad")
    .Input("dy: T").Input("x: T").Input("gamma: float").Input("mean: float").Input("inv_std: float")
    .Input("mean_backprop: float").Input("variance_backprop: float")
    .Output("dx: T").Output("gamma_backprop: float").Output("beta_backprop: float")
    .Attr(kAttrT)
    .SetShapeFn([](InferenceContext* c) { return GradShape(c, "MpsInstanceNormGrad", kInstance); })
    .Doc("Gradient of MpsInstanceNorm: dx (through the statistics), dgamma, dbeta.");

TFMPS_REGISTER_OP("MpsNormCpuIsa")
    .Output("isa: string")
    .SetShapeFn(tensorflow::shape_inference::ScalarShape)
    .Doc("The build of the norm family's CPU loops this process runs: avx2 or base.");

// -------------------------------------------------------------------------- kernels
namespace {

class NormCpuIsaOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<tensorflow::tstring>()() = NormCpuIsa();
  }
};

// Runs the CPU backend; on the tf-mps device (TFMPS_DEVICE_KERNELS) `metal` first (the
// Metal backend, norm_metal.h, encoding into the kernel's stream) and, when it declines
// (kUnsupported: float16, or a path not on Metal), the CPU backend after the stream's
// queued work, on the device's (unified) memory.
template <typename CpuFn>
void RunBackend(OpKernelContext* ctx, CpuFn cpu) {
#ifdef TFMPS_DEVICE_KERNELS
  device_glue::Run(ctx, []() { return BackendStatus::Unsupported("norm: no Metal path for this case"); }, cpu);
#else
  cpu();
#endif
}

#ifdef TFMPS_DEVICE_KERNELS
template <typename MetalFn, typename CpuFn>
void RunBackend(OpKernelContext* ctx, MetalFn metal, CpuFn cpu) {
  device_glue::Run(ctx, metal, cpu);
}
#define TFMPS_NORM_RUN(ctx, metal, cpu) RunBackend(ctx, [&] { return metal; }, cpu)
#else
#define TFMPS_NORM_RUN(ctx, metal, cpu) RunBackend(ctx, cpu)
#endif

// What every norm kernel shares: the view of x, shape checks with the op's wording, and
// the workspace.
class NormKernel : public OpKernel {
 public:
  NormKernel(OpKernelConstruction* c, const Kind& kind) : OpKernel(c), kind_(kind) {}

 protected:
  // x's view as [G, R, C], or an error naming `name`.
  absl::Status View(const Tensor& x, const char* name, NormShape* s) const {
    const TensorShape& shape = x.shape();
    if (shape.dims() < kind_.min_rank) {
      return absl::InvalidArgumentError(absl::StrCat(type_string(), ": ", name, " must have rank >= ",
                                                     kind_.min_rank, " ", kind_.x_layout, ", got shape ",
                                                     shape.DebugString()));
    }
    s->channels = shape.dim_size(shape.dims() - 1);
    s->groups = kind_.instance ? shape.dim_size(0) : 1;
    int64_t rows = 1;
    for (int i = kind_.instance ? 1 : 0; i < shape.dims() - 1; ++i) rows *= shape.dim_size(i);
    s->rows = rows;
    return absl::OkStatus();
  }

  TensorShape StatsShape(const NormShape& s) const {
    return kind_.instance ? TensorShape({s.groups, s.channels}) : TensorShape({s.channels});
  }

  absl::Status ChannelInput(OpKernelContext* ctx, int index, const char* name, const NormShape& s,
                            bool may_be_empty) const {
    const TensorShape& got = ctx->input(index).shape();
    if (got.dims() == 1 && got.dim_size(0) == s.channels) return absl::OkStatus();
    if (may_be_empty && got.dims() == 1 && got.dim_size(0) == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(type_string(), ": ", name,
                                                   " must be 1-D [channels] with one value per channel of x (",
                                                   s.channels, ")", may_be_empty ? " or [0] in training" : "",
                                                   ", got shape ", got.DebugString()));
  }

  // A statistics input of StatsShape(s) (or [0] for none, when allowed); *present says which.
  absl::Status StatsInput(OpKernelContext* ctx, int index, const char* name, const NormShape& s,
                          bool may_be_empty, bool* present) const {
    const TensorShape& got = ctx->input(index).shape();
    const TensorShape expected = StatsShape(s);
    *present = true;
    if (got == expected) return absl::OkStatus();
    if (may_be_empty && got.dims() == 1 && got.dim_size(0) == 0) {
      *present = false;
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(absl::StrCat(type_string(), ": ", name, " must have the statistics' shape ",
                                                   kind_.stats_layout, " = ", expected.DebugString(),
                                                   may_be_empty ? " (or [0] for none)" : "", ", got shape ",
                                                   got.DebugString()));
  }

  // A float64 host buffer of `size` values (TF's allocator caches it).
  absl::Status Workspace(OpKernelContext* ctx, int64_t size, Tensor* t, double** data) const {
    *data = nullptr;
    if (size <= 0) return absl::OkStatus();
    tensorflow::AllocatorAttributes host;
    host.set_on_host(true);
    TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_DOUBLE, TensorShape({size}), t, host));
    *data = t->flat<double>().data();
    return absl::OkStatus();
  }

  static DataType DTypeOf(const Tensor& t) {
    return t.dtype() == tensorflow::DT_HALF ? DataType::kFloat16 : DataType::kFloat32;
  }

  Kind kind_;
};

class NormForwardOp : public NormKernel {
 public:
  NormForwardOp(OpKernelConstruction* c, const Kind& kind) : NormKernel(c, kind) {
    OP_REQUIRES_OK(c, c->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(c, EpsilonStatus(type_string(), epsilon_));
    if (!kind.instance) OP_REQUIRES_OK(c, c->GetAttr("is_training", &training_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(kFwdX);
    NormShape s;
    OP_REQUIRES_OK(ctx, View(x, "x", &s));
    OP_REQUIRES_OK(ctx, ChannelInput(ctx, kFwdGamma, "gamma", s, false));
    OP_REQUIRES_OK(ctx, ChannelInput(ctx, kFwdBeta, "beta", s, false));
    if (!kind_.instance) {
      OP_REQUIRES_OK(ctx, ChannelInput(ctx, kFwdMean, "mean", s, training_));
      OP_REQUIRES_OK(ctx, ChannelInput(ctx, kFwdVariance, "variance", s, training_));
    }
    Tensor* y = nullptr;
    Tensor* stats[3] = {nullptr, nullptr, nullptr};
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    for (int i = 0; i < 3; ++i) OP_REQUIRES_OK(ctx, ctx->allocate_output(i + 1, StatsShape(s), &stats[i]));
    if (s.groups == 0 || s.channels == 0) return;  // nothing to compute
    ForwardArgs a;
    a.dtype = DTypeOf(x);
    a.x = x.data();
    a.gamma = ctx->input(kFwdGamma).flat<float>().data();
    a.beta = ctx->input(kFwdBeta).flat<float>().data();
    if (!training_) {
      a.mean_in = ctx->input(kFwdMean).flat<float>().data();
      a.var_in = ctx->input(kFwdVariance).flat<float>().data();
    }
    a.epsilon = epsilon_;
    a.y = y->data();
    a.mean = stats[0]->flat<float>().data();
    a.variance = stats[1]->flat<float>().data();
    a.inv_std = stats[2]->flat<float>().data();
    Tensor scratch;
    double* ws = nullptr;
    OP_REQUIRES_OK(ctx, Workspace(ctx, ForwardCpuWorkspace(s, training_), &scratch, &ws));
    TFMPS_NORM_RUN(ctx, NormForwardMetal(s, a, kind_.instance),
                   [&] { ForwardCpu(s, a, ws, tfglue::CpuParallelFor(ctx)); });
  }

 private:
  float epsilon_ = 1e-3f;
  bool training_ = true;
};

class NormGradOp : public NormKernel {
 public:
  NormGradOp(OpKernelConstruction* c, const Kind& kind) : NormKernel(c, kind) {
    if (!kind.instance) OP_REQUIRES_OK(c, c->GetAttr("is_training", &training_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(kGradDy);
    const Tensor& x = ctx->input(kGradX);
    NormShape s;
    OP_REQUIRES_OK(ctx, View(x, "x", &s));
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                absl::InvalidArgumentError(absl::StrCat(type_string(), ": dy must have the shape of x, ",
                                                        x.shape().DebugString(), ", got ",
                                                        dy.shape().DebugString())));
    OP_REQUIRES_OK(ctx, ChannelInput(ctx, kGradGamma, "gamma", s, false));
    bool present = true, has_gm = false, has_gv = false;
    OP_REQUIRES_OK(ctx, StatsInput(ctx, kGradMean, "mean", s, false, &present));
    OP_REQUIRES_OK(ctx, StatsInput(ctx, kGradInvStd, "inv_std", s, false, &present));
    OP_REQUIRES_OK(ctx, StatsInput(ctx, kGradMeanBackprop, "mean_backprop", s, true, &has_gm));
    OP_REQUIRES_OK(ctx, StatsInput(ctx, kGradVarianceBackprop, "variance_backprop", s, true, &has_gv));
    Tensor* dx = nullptr;
    Tensor* dgamma = nullptr;
    Tensor* dbeta = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({s.channels}), &dgamma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({s.channels}), &dbeta));
    BackwardArgs a;
    a.dtype = DTypeOf(x);
    a.training = training_;
    a.dy = dy.data();
    a.x = x.data();
    a.gamma = ctx->input(kGradGamma).flat<float>().data();
    a.mean = ctx->input(kGradMean).flat<float>().data();
    a.inv_std = ctx->input(kGradInvStd).flat<float>().data();
    a.mean_backprop = has_gm ? ctx->input(kGradMeanBackprop).flat<float>().data() : nullptr;
    a.variance_backprop = has_gv ? ctx->input(kGradVarianceBackprop).flat<float>().data() : nullptr;
    a.dx = dx->data();
    a.gamma_backprop = dgamma->flat<float>().data();
    a.beta_backprop = dbeta->flat<float>().data();
    if (s.groups == 0 || s.channels == 0) {  // no values: zero sums
      RunBackend(ctx, [&] {
        for (int64_t c = 0; c < s.channels; ++c) a.gamma_backprop[c] = a.beta_backprop[c] = 0.0f;
      });
      return;
    }
    Tensor scratch;
    double* ws = nullptr;
    OP_REQUIRES_OK(ctx, Workspace(ctx, BackwardCpuWorkspace(s, training_), &scratch, &ws));
    TFMPS_NORM_RUN(ctx, NormBackwardMetal(s, a, kind_.instance),
                   [&] { BackwardCpu(s, a, ws, tfglue::CpuParallelFor(ctx)); });
  }

 private:
  bool training_ = true;  // instance norm: always
};

class BatchNormOp : public NormForwardOp {
 public:
  explicit BatchNormOp(OpKernelConstruction* c) : NormForwardOp(c, kBatch) {}
};
class InstanceNormOp : public NormForwardOp {
 public:
  explicit InstanceNormOp(OpKernelConstruction* c) : NormForwardOp(c, kInstance) {}
};
class BatchNormGradOp : public NormGradOp {
 public:
  explicit BatchNormGradOp(OpKernelConstruction* c) : NormGradOp(c, kBatch) {}
};
class InstanceNormGradOp : public NormGradOp {
 public:
  explicit InstanceNormGradOp(OpKernelConstruction* c) : NormGradOp(c, kInstance) {}
};

#ifndef TFMPS_DEVICE_KERNELS
#define TFMPS_REGISTER_NORM(NAME, KERNEL)                                                               \
  REGISTER_KERNEL_BUILDER(Name(NAME).Device(DEVICE_CPU).TypeConstraint<float>("T"), KERNEL);           \
  REGISTER_KERNEL_BUILDER(Name(NAME).Device(DEVICE_CPU).TypeConstraint<Eigen::half>("T"), KERNEL)
TFMPS_REGISTER_NORM("MpsBatchNorm", BatchNormOp);
TFMPS_REGISTER_NORM("MpsBatchNormGrad", BatchNormGradOp);
TFMPS_REGISTER_NORM("MpsInstanceNorm", InstanceNormOp);
TFMPS_REGISTER_NORM("MpsInstanceNormGrad", InstanceNormGradOp);
#undef TFMPS_REGISTER_NORM
REGISTER_KERNEL_BUILDER(Name("MpsNormCpuIsa").Device(DEVICE_CPU), NormCpuIsaOp);
#endif  // TFMPS_DEVICE_KERNELS

}  // namespace

#ifdef TFMPS_DEVICE_KERNELS
namespace {
template <typename Kernel, typename T>
void RegisterOne(const char* name, const char* type) {
  tensorflow::register_kernel::Name b(name);
  b.Device(type).TypeConstraint<T>("T");
  new tensorflow::kernel_factory::OpKernelRegistrar(b.Build(), name, [](OpKernelConstruction* c) -> OpKernel* {
    return new Kernel(c);
  });
}
template <typename Kernel>
void RegisterBoth(const char* name, const char* type) {
  RegisterOne<Kernel, float>(name, type);
  RegisterOne<Kernel, Eigen::half>(name, type);
}
}  // namespace

// The device's norm kernels: every input in device memory (no host scalars). Runs from
// the device kernels library's static initialization: only constants used here.
void RegisterDeviceKernels(const char* type) {
  RegisterBoth<BatchNormOp>("MpsBatchNorm", type);
  RegisterBoth<BatchNormGradOp>("MpsBatchNormGrad", type);
  RegisterBoth<InstanceNormOp>("MpsInstanceNorm", type);
  RegisterBoth<InstanceNormGradOp>("MpsInstanceNormGrad", type);
}
#endif  // TFMPS_DEVICE_KERNELS

}  // namespace norm
}  // namespace tfmps
