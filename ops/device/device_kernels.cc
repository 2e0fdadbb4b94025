// Kernels of the tf-mps device (TF C++ API): standard TensorFlow ops that a Keras training
// step needs, and the variable updates, on the device's Metal implementations
// (device_ops.h), encoding into the stream TensorFlow runs the kernel on. The tf_mps ops'
// own device kernels are registered by their families (optim_ops.cc built with
// TFMPS_DEVICE_KERNELS) from RegisterDeviceKernels below.
//
// Loaded after the op library and the plugin (tf_mps.device.load): kernels are
// registered for the device type the plugin registered ("MPS" or "GPU", config.cc), at
// load time, and for none when the device is off. Validation is TensorFlow's own where
// it has it (shapes, broadcasting) with the same messages' content; a kernel whose Metal
// path declines its arguments waits for the stream and computes on the CPU, on the same
// unified memory (device_ops_cpu.cc).
#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#include <string>
#include <vector>

#include "ops/device/device_kernels_glue.h"
#include "ops/device/device_ops.h"
#include "ops/device/metal_device.h"
#include "tensorflow/c/kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/bcast.h"

namespace tfmps {
namespace device_glue {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

device::Stream* StreamOf(OpKernelContext* ctx) {
  TF_Status* status = TF_NewStatus();
  SP_Stream s = TF_GetStream(reinterpret_cast<TF_OpKernelContext*>(ctx), status);
  const bool ok = TF_GetCode(status) == TF_OK;
  TF_DeleteStatus(status);
  return ok && s != nullptr ? s->stream : nullptr;
}

void Run(OpKernelContext* ctx, const std::function<BackendStatus()>& metal, const std::function<void()>& cpu) {
  device::Stream* stream = StreamOf(ctx);
  OP_REQUIRES(ctx, stream != nullptr,
              absl::InternalError(absl::StrCat(ctx->op_kernel().type_string(),
                                               ": not running on a tf-mps device stream")));
  device::ScopedStream scope(stream);
  const BackendStatus s = metal();
  if (s.code == BackendStatus::Code::kUnsupported) {
    const std::string e = scope.Wait();
    OP_REQUIRES(ctx, e.empty(), absl::InternalError(absl::StrCat(ctx->op_kernel().type_string(), ": ", e)));
    cpu();
    return;
  }
  OP_REQUIRES(ctx, s.ok(), absl::InternalError(absl::StrCat(ctx->op_kernel().type_string(), ": ", s.message)));
}

namespace {

const float* In(const Tensor& t) { return t.flat<float>().data(); }
float* Out(Tensor* t) { return t->flat<float>().data(); }
const void* Data(const Tensor& t) { return t.data(); }
void* Data(Tensor* t) { return t->data(); }
// The kernels' element type of a float tensor (float32 or half; registrations keep to those).
device_ops::Elem ElemOf(const Tensor& t) {
  return t.dtype() == tensorflow::DT_HALF ? device_ops::Elem::kF16 : device_ops::Elem::kF32;
}

// ------------------------------------------------------------------ MatMul
class MatMulOp : public OpKernel {
 public:
  explicit MatMulOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("transpose_a", &ta_));
    OP_REQUIRES_OK(c, c->GetAttr("transpose_b", &tb_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& a = ctx->input(0);
    const Tensor& b = ctx->input(1);
    OP_REQUIRES(ctx, a.dims() == 2 && b.dims() == 2,
                absl::InvalidArgumentError(absl::StrCat("MatMul: a and b must be matrices, got shapes ",
                                                        a.shape().DebugString(), " and ", b.shape().DebugString())));
    const int64_t m = a.dim_size(ta_ ? 1 : 0), k = a.dim_size(ta_ ? 0 : 1);
    const int64_t kb = b.dim_size(tb_ ? 1 : 0), n = b.dim_size(tb_ ? 0 : 1);
    OP_REQUIRES(ctx, k == kb,
                absl::InvalidArgumentError(absl::StrCat("MatMul: inner dimensions of a ", a.shape().DebugString(),
                                                        " and b ", b.shape().DebugString(), " differ: ", k, " vs ",
                                                        kb, " (transpose_a=", ta_, ", transpose_b=", tb_, ")")));
    Tensor* c = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({m, n}), &c));
    if (c->NumElements() == 0) return;
    Run(
        ctx, [&] { return device_ops::MatMul(ElemOf(a), Data(a), Data(b), Data(c), m, n, k, ta_, tb_); },
        [&] { device_ops::cpu::MatMul(ElemOf(a), Data(a), Data(b), Data(c), m, n, k, ta_, tb_); });
  }

 private:
  bool ta_ = false, tb_ = false;
};

// ------------------------------------------------------------------ element-wise
template <int kOp>
class UnaryOp : public OpKernel {
 public:
  explicit UnaryOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const int64_t n = x.NumElements();
    if (n == 0) return;
    Run(
        ctx, [&] { return device_ops::Unary(kOp, ElemOf(x), Data(x), Data(y), n); },
        [&] { device_ops::cpu::Unary(kOp, ElemOf(x), Data(x), Data(y), n); });
  }
};

// Broadcasting geometry of two shapes (numpy rules), or an InvalidArgument naming the op.
absl::Status Geometry(const OpKernelContext* ctx, const TensorShape& xs, const TensorShape& ys,
                      device_ops::Broadcast* b, TensorShape* out) {
  const int rank = std::max(xs.dims(), ys.dims());
  if (rank > TFMPS_MAX_DIMS) {
    return absl::InvalidArgumentError(absl::StrCat(ctx->op_kernel().type_string(), ": the tf-mps device handles up to ",
                                                   TFMPS_MAX_DIMS, " dims, got ", xs.DebugString(), " and ",
                                                   ys.DebugString()));
  }
  *out = TensorShape();
  b->rank = rank;
  int64_t xstride = 1, ystride = 1;
  std::vector<int64_t> dims(rank);
  for (int d = rank - 1; d >= 0; --d) {
    const int xd = d - (rank - xs.dims()), yd = d - (rank - ys.dims());
    const int64_t x = xd >= 0 ? xs.dim_size(xd) : 1, y = yd >= 0 ? ys.dim_size(yd) : 1;
    if (x != y && x != 1 && y != 1) {
      return absl::InvalidArgumentError(absl::StrCat(ctx->op_kernel().type_string(),
                                                     ": Incompatible shapes: ", xs.DebugString(), " vs. ",
                                                     ys.DebugString()));
    }
    dims[d] = x == 1 ? y : x;
    b->dims[d] = dims[d];
    b->x_strides[d] = x == 1 ? 0 : xstride;
    b->y_strides[d] = y == 1 ? 0 : ystride;
    xstride *= x;
    ystride *= y;
  }
  for (int d = 0; d < rank; ++d) out->AddDim(dims[d]);
  // Merge neighbouring dims that both inputs walk alike (contiguous, or both broadcast):
  // same-shape inputs become one dim, so the kernel's index arithmetic is one step.
  int r = 0;
  for (int d = 0; d < rank; ++d) {
    if (r > 0 && b->x_strides[r - 1] == b->x_strides[d] * b->dims[d] &&
        b->y_strides[r - 1] == b->y_strides[d] * b->dims[d]) {
      b->dims[r - 1] *= b->dims[d];
      b->x_strides[r - 1] = b->x_strides[d];
      b->y_strides[r - 1] = b->y_strides[d];
    } else {
      b->dims[r] = b->dims[d];
      b->x_strides[r] = b->x_strides[d];
      b->y_strides[r] = b->y_strides[d];
      ++r;
    }
  }
  b->rank = r;
  b->x_size = xs.num_elements();
  b->y_size = ys.num_elements();
  b->out_size = out->num_elements();
  return absl::OkStatus();
}

void RunBinary(OpKernelContext* ctx, int op, const Tensor& x, const Tensor& y, Tensor* z,
               const device_ops::Broadcast& b) {
  if (b.out_size == 0) return;
  Run(
      ctx, [&] { return device_ops::Binary(op, ElemOf(x), Data(x), Data(y), Data(z), b); },
      [&] { device_ops::cpu::Binary(op, ElemOf(x), Data(x), Data(y), Data(z), b); });
}

void CastInto(OpKernelContext* ctx, const char* kernel, const Tensor& x, Tensor* y) {
  const int64_t n = x.NumElements();
  if (n == 0) return;
  Run(
      ctx, [&] { return device_ops::Cast(kernel, x.data(), x.TotalBytes(), y->data(), y->TotalBytes(), n); },
      [&] { device_ops::cpu::Cast(kernel, x.data(), y->data(), n); });
}

template <int kOp>
class BinaryOp : public OpKernel {
 public:
  explicit BinaryOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& y = ctx->input(1);
    device_ops::Broadcast b;
    TensorShape shape;
    OP_REQUIRES_OK(ctx, Geometry(ctx, x.shape(), y.shape(), &b, &shape));
    Tensor* z = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &z));
    RunBinary(ctx, kOp, x, y, z, b);
  }
};

// ReluGrad(gradients, features): both of one shape.
class ReluGradOp : public OpKernel {
 public:
  explicit ReluGradOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& g = ctx->input(0);
    const Tensor& f = ctx->input(1);
    OP_REQUIRES(ctx, g.shape() == f.shape(),
                absl::InvalidArgumentError(absl::StrCat("ReluGrad: gradients and features must have the same shape, got ",
                                                        g.shape().DebugString(), " and ", f.shape().DebugString())));
    device_ops::Broadcast b;
    TensorShape shape;
    OP_REQUIRES_OK(ctx, Geometry(ctx, g.shape(), f.shape(), &b, &shape));
    Tensor* z = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &z));
    RunBinary(ctx, TFMPS_BINARY_RELU_GRAD, g, f, z, b);
  }
};

bool ChannelsFirst(OpKernelConstruction* c) {
  std::string format = "NHWC";
  if (c->HasAttr("data_format")) c->GetAttr("data_format", &format).IgnoreError();
  return format == "NCHW";
}

// BiasAdd(value, bias): bias along the last dim (NHWC) or dim 1 (NCHW).
class BiasAddOp : public OpKernel {
 public:
  explicit BiasAddOp(OpKernelConstruction* c) : OpKernel(c), nchw_(ChannelsFirst(c)) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& bias = ctx->input(1);
    OP_REQUIRES(ctx, x.dims() >= 2,
                absl::InvalidArgumentError(absl::StrCat("BiasAdd: value must be at least 2-D, got ",
                                                        x.shape().DebugString())));
    OP_REQUIRES(ctx, bias.dims() == 1,
                absl::InvalidArgumentError(absl::StrCat("BiasAdd: bias must be 1-D, got ", bias.shape().DebugString())));
    const int channel = nchw_ ? 1 : x.dims() - 1;
    OP_REQUIRES(ctx, x.dim_size(channel) == bias.dim_size(0),
                absl::InvalidArgumentError(absl::StrCat("BiasAdd: bias has ", bias.dim_size(0),
                                                        " elements but value has ", x.dim_size(channel),
                                                        " channels (dim ", channel, ")")));
    TensorShape bshape;
    for (int d = 0; d < x.dims(); ++d) bshape.AddDim(d == channel ? bias.dim_size(0) : 1);
    device_ops::Broadcast b;
    TensorShape shape;
    OP_REQUIRES_OK(ctx, Geometry(ctx, x.shape(), bshape, &b, &shape));
    Tensor* z = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &z));
    RunBinary(ctx, TFMPS_BINARY_ADD, x, bias, z, b);
  }

 private:
  bool nchw_;
};

// ------------------------------------------------------------------ reductions
void RunReduce(OpKernelContext* ctx, device_ops::Elem t, const void* x, void* y, int64_t outer, int64_t reduce,
               int64_t inner, float divisor) {
  Run(
      ctx, [&] { return device_ops::ReduceSum(t, x, y, outer, reduce, inner, divisor); },
      [&] { device_ops::cpu::ReduceSum(t, x, y, outer, reduce, inner, divisor); });
}

class BiasAddGradOp : public OpKernel {
 public:
  explicit BiasAddGradOp(OpKernelConstruction* c) : OpKernel(c), nchw_(ChannelsFirst(c)) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& g = ctx->input(0);
    OP_REQUIRES(ctx, g.dims() >= 2,
                absl::InvalidArgumentError(absl::StrCat("BiasAddGrad: out_backprop must be at least 2-D, got ",
                                                        g.shape().DebugString())));
    const int channel = nchw_ ? 1 : g.dims() - 1;
    const int64_t c = g.dim_size(channel);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({c}), &out));
    if (c == 0) return;
    if (g.NumElements() == 0) {
      Run(ctx, [&] { return device_ops::Fill(ElemOf(g), Data(out), 0.0f, c); },
          [&] { device_ops::cpu::Fill(ElemOf(g), Data(out), 0.0f, c); });
      return;
    }
    if (!nchw_) {
      RunReduce(ctx, ElemOf(g), Data(g), Data(out), 1, g.NumElements() / c, c, 1.0f);
      return;
    }
    // [N, C, rest]: the rest first, then N.
    const int64_t n = g.dim_size(0), rest = g.NumElements() / (n * c);
    Tensor tmp;
    // (The partial sums stay in float: rounding to half between the two passes would
    // round twice.)
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({n, c}), &tmp));
    if (ElemOf(g) == device_ops::Elem::kF16) {
      Tensor wide;
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, g.shape(), &wide));
      CastInto(ctx, "tfmps_cast_f16_f32", g, &wide);
      if (!ctx->status().ok()) return;
      RunReduce(ctx, device_ops::Elem::kF32, Data(wide), Data(&tmp), n * c, rest, 1, 1.0f);
      if (!ctx->status().ok()) return;
      Tensor sum;
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({c}), &sum));
      RunReduce(ctx, device_ops::Elem::kF32, Data(tmp), Data(&sum), 1, n, c, 1.0f);
      if (!ctx->status().ok()) return;
      CastInto(ctx, "tfmps_cast_f32_f16", sum, out);
      return;
    }
    RunReduce(ctx, device_ops::Elem::kF32, Data(g), Data(&tmp), n * c, rest, 1, 1.0f);
    if (!ctx->status().ok()) return;
    RunReduce(ctx, device_ops::Elem::kF32, Data(tmp), Data(out), 1, n, c, 1.0f);
  }

 private:
  bool nchw_;
};

// Sum and Mean over the axes given in reduction_indices (host memory), one contiguous run
// of reduced dims at a time, innermost first, in float (half inputs are widened first and
// the result rounded once).
template <bool kMean>
class ReduceOp : public OpKernel {
 public:
  explicit ReduceOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, c->GetAttr("keep_dims", &keep_dims_)); }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& axes_t = ctx->input(1);
    OP_REQUIRES(ctx, axes_t.dims() <= 1,
                absl::InvalidArgumentError(absl::StrCat(type_string(), ": reduction_indices must be a scalar or 1-D, got ",
                                                        axes_t.shape().DebugString())));
    const int rank = x.dims();
    std::vector<bool> reduced(rank, false);
    for (int64_t i = 0; i < axes_t.NumElements(); ++i) {
      int64_t a = axes_t.dtype() == tensorflow::DT_INT64 ? axes_t.flat<int64_t>()(i) : axes_t.flat<int32_t>()(i);
      OP_REQUIRES(ctx, a >= -rank && a < rank,
                  absl::InvalidArgumentError(absl::StrCat(type_string(), ": Invalid reduction dimension ", a, " for input with ",
                                                          rank, " dimensions.")));
      reduced[a < 0 ? a + rank : a] = true;
    }
    TensorShape out_shape;
    int64_t count = 1;
    for (int d = 0; d < rank; ++d) {
      if (reduced[d]) {
        count *= x.dim_size(d);
        if (keep_dims_) out_shape.AddDim(1);
      } else {
        out_shape.AddDim(x.dim_size(d));
      }
    }
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &y));
    if (y->NumElements() == 0) return;
    if (x.NumElements() == 0) {
      const float v = kMean ? std::nanf("") : 0.0f;
      Run(ctx, [&] { return device_ops::Fill(ElemOf(x), Data(y), v, y->NumElements()); },
          [&] { device_ops::cpu::Fill(ElemOf(x), Data(y), v, y->NumElements()); });
      return;
    }
    const float divisor = kMean ? static_cast<float>(count) : 1.0f;
    if (ElemOf(x) == device_ops::Elem::kF32) {
      ReduceFloat(ctx, Data(x), x, reduced, divisor, Data(y));
      return;
    }
    Tensor wide, wide_out;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, x.shape(), &wide));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, out_shape, &wide_out));
    CastInto(ctx, "tfmps_cast_f16_f32", x, &wide);
    if (!ctx->status().ok()) return;
    ReduceFloat(ctx, Data(wide), x, reduced, divisor, Data(&wide_out));
    if (!ctx->status().ok()) return;
    CastInto(ctx, "tfmps_cast_f32_f16", wide_out, y);
  }

 private:
  // float32 x (with x_shape's dims) reduced over `reduced` into float32 y.
  void ReduceFloat(OpKernelContext* ctx, const void* x, const Tensor& x_shape, const std::vector<bool>& reduced,
                   float divisor, void* y) {
    const int rank = x_shape.dims();
    std::vector<int64_t> dims;
    for (int d = 0; d < rank; ++d) dims.push_back(x_shape.dim_size(d));
    if (std::none_of(reduced.begin(), reduced.end(), [](bool r) { return r; })) {
      RunReduce(ctx, device_ops::Elem::kF32, x, y, 1, 1, x_shape.NumElements(), 1.0f);  // a copy
      return;
    }
    const void* src = x;
    Tensor tmp[2];
    int which = 0;
    int last = rank - 1;
    while (true) {
      while (last >= 0 && !reduced[last]) --last;
      if (last < 0) return;
      int first = last;
      while (first > 0 && reduced[first - 1]) --first;
      int64_t outer = 1, reduce = 1, inner = 1;
      for (int d = 0; d < first; ++d) outer *= dims[d];
      for (int d = first; d <= last; ++d) reduce *= dims[d];
      for (int d = last + 1; d < rank; ++d) inner *= dims[d];
      bool more = false;
      for (int d = 0; d < first; ++d) more = more || reduced[d];
      void* dst = y;
      if (more) {
        OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({outer * inner}), &tmp[which]));
        dst = Data(&tmp[which]);
      }
      RunReduce(ctx, device_ops::Elem::kF32, src, dst, outer, reduce, inner, more ? 1.0f : divisor);
      if (!ctx->status().ok() || !more) return;
      src = dst;
      which ^= 1;
      for (int d = first; d <= last; ++d) dims[d] = 1;
      last = first - 1;
    }
  }

  bool keep_dims_ = false;
};

// ------------------------------------------------------------------ softmax, losses
template <bool kLog>
class SoftmaxOp : public OpKernel {
 public:
  explicit SoftmaxOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES(ctx, x.dims() >= 1,
                absl::InvalidArgumentError(absl::StrCat(type_string(), ": logits must have >= 1 dimension, got ",
                                                        x.shape().DebugString())));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const int64_t cols = x.dim_size(x.dims() - 1);
    if (x.NumElements() == 0) return;
    const int64_t rows = x.NumElements() / cols;
    Run(
        ctx, [&] { return device_ops::Softmax(ElemOf(x), Data(x), Data(y), rows, cols, kLog); },
        [&] { device_ops::cpu::Softmax(ElemOf(x), Data(x), Data(y), rows, cols, kLog); });
  }
};

template <typename Label>
class SparseXentOp : public OpKernel {
 public:
  explicit SparseXentOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    OP_REQUIRES(ctx, logits.dims() == 2,
                absl::InvalidArgumentError(absl::StrCat("SparseSoftmaxCrossEntropyWithLogits: logits must be 2-D, got ",
                                                        logits.shape().DebugString())));
    OP_REQUIRES(ctx, labels.dims() == 1 && labels.dim_size(0) == logits.dim_size(0),
                absl::InvalidArgumentError(absl::StrCat(
                    "SparseSoftmaxCrossEntropyWithLogits: labels must be 1-D with logits' first dimension ",
                    logits.dim_size(0), ", got ", labels.shape().DebugString())));
    const int64_t rows = logits.dim_size(0), cols = logits.dim_size(1);
    Tensor* loss = nullptr;
    Tensor* backprop = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows}), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, logits.shape(), &backprop));
    if (rows == 0) return;
    OP_REQUIRES(ctx, cols > 0,
                absl::InvalidArgumentError("SparseSoftmaxCrossEntropyWithLogits: logits must have at least one class"));
    const void* l = labels.flat<Label>().data();
    Run(
        ctx,
        [&] { return device_ops::SparseSoftmaxXent(In(logits), l, sizeof(Label), Out(loss), Out(backprop), rows, cols); },
        [&] { device_ops::cpu::SparseSoftmaxXent(In(logits), l, sizeof(Label), Out(loss), Out(backprop), rows, cols); });
  }
};

// ------------------------------------------------------------------ fills
// Fill(dims, value), both in host memory.
class FillOp : public OpKernel {
 public:
  explicit FillOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dims = ctx->input(0);
    const Tensor& value = ctx->input(1);
    OP_REQUIRES(ctx, dims.dims() <= 1,
                absl::InvalidArgumentError(absl::StrCat("Fill: dims must be a vector, got ", dims.shape().DebugString())));
    OP_REQUIRES(ctx, value.dims() == 0,
                absl::InvalidArgumentError(absl::StrCat("Fill: value must be a scalar, got ", value.shape().DebugString())));
    TensorShape shape;
    if (dims.dtype() == tensorflow::DT_INT64) {
      OP_REQUIRES_OK(ctx, TensorShape::BuildTensorShape(dims.flat<int64_t>(), &shape));
    } else {
      OP_REQUIRES_OK(ctx, tensorflow::TensorShapeUtils::MakeShape(dims.flat<int32_t>(), &shape));
    }
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &y));
    const float v = value.dtype() == tensorflow::DT_HALF ? static_cast<float>(value.scalar<Eigen::half>()())
                                                         : value.scalar<float>()();
    FillWith(ctx, y, v);
  }
  static void FillWith(OpKernelContext* ctx, Tensor* y, float v) {
    const int64_t n = y->NumElements();
    if (n == 0) return;
    Run(ctx, [&] { return device_ops::Fill(ElemOf(*y), Data(y), v, n); },
        [&] { device_ops::cpu::Fill(ElemOf(*y), Data(y), v, n); });
  }
};

template <int kValue>
class FillLikeOp : public OpKernel {
 public:
  explicit FillLikeOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(0).shape(), &y));
    FillOp::FillWith(ctx, y, static_cast<float>(kValue));
  }
};

// ------------------------------------------------------------------ casts
// Cast between float, int32, int64 and bool (the pairs of device_kernels.metal); the
// same type is a copy. Other pairs run on TensorFlow's CPU kernel (no registration).
class CastOp : public OpKernel {
 public:
  CastOp(OpKernelConstruction* c, const char* kernel) : OpKernel(c), kernel_(kernel) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const int64_t n = x.NumElements();
    if (n == 0) return;
    const void* src = x.data();
    void* dst = y->data();
    Run(
        ctx, [&] { return device_ops::Cast(kernel_, src, x.TotalBytes(), dst, y->TotalBytes(), n); },
        [&] { device_ops::cpu::Cast(kernel_, src, dst, n); });
  }

 private:
  const char* kernel_;
};

template <typename S, typename D>
struct CastKernel {
  static const char* name;
};

template <typename S, typename D>
class TypedCastOp : public CastOp {
 public:
  explicit TypedCastOp(OpKernelConstruction* c) : CastOp(c, CastKernel<S, D>::name) {}
};
template <> const char* CastKernel<int64_t, float>::name = "tfmps_cast_i64_f32";
template <> const char* CastKernel<int32_t, float>::name = "tfmps_cast_i32_f32";
template <> const char* CastKernel<bool, float>::name = "tfmps_cast_bool_f32";
template <> const char* CastKernel<float, int64_t>::name = "tfmps_cast_f32_i64";
template <> const char* CastKernel<float, int32_t>::name = "tfmps_cast_f32_i32";
template <> const char* CastKernel<float, bool>::name = "tfmps_cast_f32_bool";
template <> const char* CastKernel<int64_t, int32_t>::name = "tfmps_cast_i64_i32";
template <> const char* CastKernel<int32_t, int64_t>::name = "tfmps_cast_i32_i64";
template <> const char* CastKernel<Eigen::half, float>::name = "tfmps_cast_f16_f32";
template <> const char* CastKernel<float, Eigen::half>::name = "tfmps_cast_f32_f16";

// ------------------------------------------------------------------ variables
// AssignAddVariableOp / AssignSubVariableOp on a float variable: in place in stream order,
// after a copy (also in stream order) when a reader still shares the buffer, as
// TensorFlow's own kernel does.
// The element-wise update of a variable by `value` on the host, for the dtypes the Metal
// kernels do not take (bfloat16, double, integers): after the stream's work.
template <typename T>
void HostUpdate(int op, T* w, const T* u, int64_t n, bool scalar) {
  for (int64_t i = 0; i < n; ++i) {
    const T v = u[scalar ? 0 : i];
    w[i] = op == TFMPS_SCATTER_ADD ? static_cast<T>(w[i] + v) : op == TFMPS_SCATTER_SUB ? static_cast<T>(w[i] - v) : v;
  }
}

template <typename T>
constexpr bool kOnMetal = std::is_same_v<T, float> || std::is_same_v<T, Eigen::half>;

// The variable of input 0, looked up and checked to be initialized (the caller locks it).
absl::Status InitializedVariable(OpKernelContext* ctx, tensorflow::core::RefCountPtr<tensorflow::Var>* var) {
  TF_RETURN_IF_ERROR(LookupResource(ctx, HandleFromInput(ctx, 0), var));
  if (!(*var)->is_initialized) {
    return absl::FailedPreconditionError(
        absl::StrCat(ctx->op_kernel().type_string(), ": the variable is not initialized"));
  }
  return absl::OkStatus();
}

template <int kOp, typename T>
class AssignUpdateOp : public OpKernel {
 public:
  explicit AssignUpdateOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    tensorflow::core::RefCountPtr<tensorflow::Var> var;
    OP_REQUIRES_OK(ctx, InitializedVariable(ctx, &var));
    const Tensor& value = ctx->input(1);
    tsl::mutex_lock lock(*var->mu());
    Tensor* t = var->tensor();
    OP_REQUIRES(ctx, t->dtype() == value.dtype() && t->shape() == value.shape(),
                absl::InvalidArgumentError(absl::StrCat(type_string(), ": value of shape ", value.shape().DebugString(),
                                                        " does not match the variable's ", t->shape().DebugString())));
    OP_REQUIRES_OK(ctx, CopyOnWrite(ctx, var.get()));
    t = var->tensor();
    if constexpr (kOnMetal<T>) {
      device_ops::Broadcast b;
      TensorShape shape;
      OP_REQUIRES_OK(ctx, Geometry(ctx, t->shape(), value.shape(), &b, &shape));
      RunBinary(ctx, kOp, *t, value, t, b);
    } else {
      T* w = t->flat<T>().data();
      const T* u = value.flat<T>().data();
      const int64_t n = t->NumElements();
      const int op = kOp == TFMPS_BINARY_ADD ? TFMPS_SCATTER_ADD : TFMPS_SCATTER_SUB;
      Run(ctx, [] { return BackendStatus::Unsupported("dtype"); }, [&] { HostUpdate(op, w, u, n, false); });
    }
  }
};

// The indices of a gather or scatter (host memory), checked against `rows` and narrowed
// to int32 for the kernels. TensorFlow's message: "indices[k] = v is not in [0, rows)".
absl::Status CheckedIndices(const OpKernelContext* ctx, const Tensor& indices, int64_t rows,
                            std::vector<int32_t>* out) {
  const int64_t n = indices.NumElements();
  out->resize(n);
  if (rows > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(ctx->op_kernel().type_string(),
                                                   ": the tf-mps device indexes at most 2^31 - 1 rows, got ", rows));
  }
  for (int64_t k = 0; k < n; ++k) {
    const int64_t v = indices.dtype() == tensorflow::DT_INT64 ? indices.flat<int64_t>()(k) : indices.flat<int32_t>()(k);
    if (v < 0 || v >= rows) {
      return absl::InvalidArgumentError(absl::StrCat(ctx->op_kernel().type_string(), ": indices[", k, "] = ", v,
                                                     " is not in [0, ", rows, ")"));
    }
    (*out)[k] = static_cast<int32_t>(v);
  }
  return absl::OkStatus();
}

// ResourceGather(resource, indices) with batch_dims 0: rows of a variable (float32 on
// Metal; other dtypes on the host after the stream's work).
template <typename T>
class ResourceGatherOp : public OpKernel {
 public:
  explicit ResourceGatherOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("batch_dims", &batch_dims_));
    OP_REQUIRES(c, batch_dims_ == 0,
                absl::UnimplementedError(absl::StrCat("ResourceGather: the tf-mps device gathers with batch_dims 0, got ",
                                                      batch_dims_, " (place this op on the CPU)")));
  }
  void Compute(OpKernelContext* ctx) override {
    tensorflow::core::RefCountPtr<tensorflow::Var> var;
    OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, 0), &var));
    const Tensor& indices = ctx->input(1);
    tsl::tf_shared_lock lock(*var->mu());
    const Tensor& params = *var->tensor();
    OP_REQUIRES(ctx, params.dims() >= 1,
                absl::InvalidArgumentError(absl::StrCat("ResourceGather: params must be of rank >= 1, got ",
                                                        params.shape().DebugString())));
    const int64_t rows = params.dim_size(0), row = params.NumElements() / std::max<int64_t>(rows, 1);
    std::vector<int32_t> idx;
    OP_REQUIRES_OK(ctx, CheckedIndices(ctx, indices, rows, &idx));
    TensorShape shape = indices.shape();
    for (int d = 1; d < params.dims(); ++d) shape.AddDim(params.dim_size(d));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    if (out->NumElements() == 0) return;
    const int64_t count = static_cast<int64_t>(idx.size());
    const T* src = params.flat<T>().data();
    T* dst = out->flat<T>().data();
    auto host = [&] {
      for (int64_t k = 0; k < count; ++k) std::copy(src + idx[k] * row, src + (idx[k] + 1) * row, dst + k * row);
    };
    if constexpr (std::is_same_v<T, float>) {
      Run(ctx, [&] { return device_ops::Gather(src, rows, idx.data(), count, row, dst); }, host);
    } else {
      Run(ctx, [] { return BackendStatus::Unsupported("dtype"); }, host);
    }
  }

 private:
  int32_t batch_dims_ = 0;
};

// ResourceScatterAdd/Sub/Update(resource, indices, updates), in place in stream order
// (copy-on-write first, as TensorFlow's kernel); float32 on Metal, other dtypes on the host
// after the stream's work.
template <int kOp, typename T>
class ResourceScatterOp : public OpKernel {
 public:
  explicit ResourceScatterOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    tensorflow::core::RefCountPtr<tensorflow::Var> var;
    OP_REQUIRES_OK(ctx, InitializedVariable(ctx, &var));
    const Tensor& indices = ctx->input(1);
    const Tensor& updates = ctx->input(2);
    tsl::mutex_lock lock(*var->mu());
    Tensor* params = var->tensor();
    OP_REQUIRES(ctx, params->dims() >= 1,
                absl::InvalidArgumentError(absl::StrCat(type_string(), ": the variable must be of rank >= 1, got ",
                                                        params->shape().DebugString())));
    TensorShape expected = indices.shape();
    for (int d = 1; d < params->dims(); ++d) expected.AddDim(params->dim_size(d));
    const bool scalar = updates.dims() == 0;
    OP_REQUIRES(ctx, scalar || updates.shape() == expected,
                absl::InvalidArgumentError(absl::StrCat(type_string(), ": updates must be a scalar or of shape ",
                                                        expected.DebugString(), " (indices.shape + params.shape[1:]), got ",
                                                        updates.shape().DebugString())));
    const int64_t rows = params->dim_size(0), row = params->NumElements() / std::max<int64_t>(rows, 1);
    std::vector<int32_t> idx;
    OP_REQUIRES_OK(ctx, CheckedIndices(ctx, indices, rows, &idx));
    if (idx.empty() || row == 0) return;
    OP_REQUIRES_OK(ctx, CopyOnWrite(ctx, var.get()));
    params = var->tensor();
    const int64_t count = static_cast<int64_t>(idx.size());
    T* w = params->flat<T>().data();
    const T* u = updates.flat<T>().data();
    auto host = [&] {
      for (int64_t k = 0; k < count; ++k) HostUpdate(kOp, w + idx[k] * row, u + (scalar ? 0 : k * row), row, scalar);
    };
    if constexpr (std::is_same_v<T, float>) {
      Run(ctx, [&] { return device_ops::Scatter(kOp, w, rows, idx.data(), count, row, u, scalar); }, host);
    } else {
      Run(ctx, [] { return BackendStatus::Unsupported("dtype"); }, host);
    }
  }
};

}  // namespace

absl::Status CopyInStream(OpKernelContext* ctx, const void* src, void* dst, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  device::Stream* stream = StreamOf(ctx);
  if (stream == nullptr) return absl::InternalError("not running on a tf-mps device stream");
  device::ScopedStream scope(stream);
  const BackendStatus s = device_ops::Copy(src, dst, bytes);
  if (s.code == BackendStatus::Code::kUnsupported) {
    const std::string e = scope.Wait();
    if (!e.empty()) return absl::InternalError(e);
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  return s.ok() ? absl::OkStatus() : absl::InternalError(s.message);
}

absl::Status CopyOnWrite(OpKernelContext* ctx, tensorflow::Var* var) {
  Tensor* t = var->tensor();
  if (!var->copy_on_read_mode.load() && t->RefCountIsOne()) return absl::OkStatus();
  Tensor copy;
  tensorflow::AllocatorAttributes attr;
  attr.set_gpu_compatible(true);
  attr.set_nic_compatible(true);
  TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &copy, attr));
  TF_RETURN_IF_ERROR(CopyInStream(ctx, t->data(), copy.data(), t->TotalBytes()));
  *t = copy;
  return absl::OkStatus();
}

namespace {

using tensorflow::register_kernel::Name;

// Registers K for the kernel definition `b` describes (b's own builder is consumed).
template <class K>
void Register(tensorflow::KernelDefBuilder& b, const char* name) {
  new tensorflow::kernel_factory::OpKernelRegistrar(
      b.Build(), name, [](OpKernelConstruction* c) -> OpKernel* { return new K(c); });
}

// A builder that lives until the end of registration (Name(...) chains return references
// into the builder, so a temporary one would dangle).
tensorflow::KernelDefBuilder& Def(const char* op, const char* type) {
  static std::vector<std::unique_ptr<Name>>* builders = new std::vector<std::unique_ptr<Name>>();
  builders->push_back(std::make_unique<Name>(op));
  return builders->back()->Device(type);
}

// The float ops, for T = float and half.
void RegisterFloat(const char* type, tensorflow::DataType dt) {
  auto F = [dt](const char* op, const char* type) -> tensorflow::KernelDefBuilder& {
    return Def(op, type).TypeConstraint("T", dt);
  };
  Register<MatMulOp>(F("MatMul", type), "TfmpsMatMulOp");
#define TFMPS_UNARY(NAME, CODE) Register<UnaryOp<CODE>>(F(NAME, type), "TfmpsUnaryOp")
  TFMPS_UNARY("Neg", TFMPS_UNARY_NEG);
  TFMPS_UNARY("Square", TFMPS_UNARY_SQUARE);
  TFMPS_UNARY("Sqrt", TFMPS_UNARY_SQRT);
  TFMPS_UNARY("Rsqrt", TFMPS_UNARY_RSQRT);
  TFMPS_UNARY("Exp", TFMPS_UNARY_EXP);
  TFMPS_UNARY("Log", TFMPS_UNARY_LOG);
  TFMPS_UNARY("Relu", TFMPS_UNARY_RELU);
  TFMPS_UNARY("Abs", TFMPS_UNARY_ABS);
  TFMPS_UNARY("Tanh", TFMPS_UNARY_TANH);
  TFMPS_UNARY("Sigmoid", TFMPS_UNARY_SIGMOID);
  TFMPS_UNARY("Reciprocal", TFMPS_UNARY_RECIPROCAL);
  TFMPS_UNARY("Sign", TFMPS_UNARY_SIGN);
#undef TFMPS_UNARY
#define TFMPS_BINARY(NAME, CODE) Register<BinaryOp<CODE>>(F(NAME, type), "TfmpsBinaryOp")
  TFMPS_BINARY("Add", TFMPS_BINARY_ADD);
  TFMPS_BINARY("AddV2", TFMPS_BINARY_ADD);
  TFMPS_BINARY("Sub", TFMPS_BINARY_SUB);
  TFMPS_BINARY("Mul", TFMPS_BINARY_MUL);
  TFMPS_BINARY("RealDiv", TFMPS_BINARY_DIV);
  TFMPS_BINARY("Div", TFMPS_BINARY_DIV);
  TFMPS_BINARY("DivNoNan", TFMPS_BINARY_DIV_NO_NAN);
  TFMPS_BINARY("Maximum", TFMPS_BINARY_MAXIMUM);
  TFMPS_BINARY("Minimum", TFMPS_BINARY_MINIMUM);
  TFMPS_BINARY("SquaredDifference", TFMPS_BINARY_SQUARED_DIFFERENCE);
  TFMPS_BINARY("Pow", TFMPS_BINARY_POW);
#undef TFMPS_BINARY
  Register<ReluGradOp>(F("ReluGrad", type), "TfmpsReluGradOp");
  Register<BiasAddOp>(F("BiasAdd", type), "TfmpsBiasAddOp");
  Register<BiasAddOp>(F("BiasAddV1", type), "TfmpsBiasAddOp");
  Register<BiasAddGradOp>(F("BiasAddGrad", type), "TfmpsBiasAddGradOp");
  Register<ReduceOp<false>>(F("Sum", type).HostMemory("reduction_indices"), "TfmpsSumOp");
  Register<ReduceOp<true>>(F("Mean", type).HostMemory("reduction_indices"), "TfmpsMeanOp");
  Register<SoftmaxOp<false>>(F("Softmax", type), "TfmpsSoftmaxOp");
  Register<SoftmaxOp<true>>(F("LogSoftmax", type), "TfmpsLogSoftmaxOp");
  Register<FillOp>(F("Fill", type).HostMemory("dims").HostMemory("value"), "TfmpsFillOp");
  Register<FillLikeOp<0>>(F("ZerosLike", type), "TfmpsZerosLikeOp");
  Register<FillLikeOp<1>>(F("OnesLike", type), "TfmpsOnesLikeOp");
}

// Resource ops run where their variable lives (eager gives them no CPU fallback), so every
// dtype a variable on the device can have gets them.
template <typename T>
void RegisterVariableOps(const char* type, bool assign_update = true) {
  const tensorflow::DataType dt = tensorflow::DataTypeToEnum<T>::value;
  if (assign_update) {
    Register<AssignUpdateOp<TFMPS_BINARY_ADD, T>>(
        Def("AssignAddVariableOp", type).TypeConstraint("dtype", dt).HostMemory("resource"), "TfmpsAssignAddVariableOp");
    Register<AssignUpdateOp<TFMPS_BINARY_SUB, T>>(
        Def("AssignSubVariableOp", type).TypeConstraint("dtype", dt).HostMemory("resource"), "TfmpsAssignSubVariableOp");
  }
  for (auto index : {tensorflow::DT_INT32, tensorflow::DT_INT64}) {
    auto ix = [&](const char* op) -> tensorflow::KernelDefBuilder& {
      return Def(op, type).TypeConstraint("dtype", dt).TypeConstraint("Tindices", index).HostMemory("resource")
          .HostMemory("indices");
    };
    Register<ResourceGatherOp<T>>(ix("ResourceGather"), "TfmpsResourceGatherOp");
    Register<ResourceScatterOp<TFMPS_SCATTER_ADD, T>>(ix("ResourceScatterAdd"), "TfmpsResourceScatterAddOp");
    Register<ResourceScatterOp<TFMPS_SCATTER_SUB, T>>(ix("ResourceScatterSub"), "TfmpsResourceScatterSubOp");
    Register<ResourceScatterOp<TFMPS_SCATTER_UPDATE, T>>(ix("ResourceScatterUpdate"), "TfmpsResourceScatterUpdateOp");
  }
}

void RegisterStandard(const char* type) {
  RegisterFloat(type, tensorflow::DT_FLOAT);
  RegisterFloat(type, tensorflow::DT_HALF);
  Register<SparseXentOp<int32_t>>(Def("SparseSoftmaxCrossEntropyWithLogits", type)
                                      .TypeConstraint<float>("T")
                                      .TypeConstraint<int32_t>("Tlabels"),
                                  "TfmpsSparseXentOp");
  Register<SparseXentOp<int64_t>>(Def("SparseSoftmaxCrossEntropyWithLogits", type)
                                      .TypeConstraint<float>("T")
                                      .TypeConstraint<int64_t>("Tlabels"),
                                  "TfmpsSparseXentOp");
#define TFMPS_CAST(S, D)                                                                          \
  Register<TypedCastOp<S, D>>(Def("Cast", type).TypeConstraint<S>("SrcT").TypeConstraint<D>("DstT"), \
                              "TfmpsCastOp")
  TFMPS_CAST(int64_t, float);
  TFMPS_CAST(int32_t, float);
  TFMPS_CAST(bool, float);
  TFMPS_CAST(float, int64_t);
  TFMPS_CAST(float, int32_t);
  TFMPS_CAST(float, bool);
  TFMPS_CAST(int64_t, int32_t);
  TFMPS_CAST(int32_t, int64_t);
  TFMPS_CAST(Eigen::half, float);
  TFMPS_CAST(float, Eigen::half);
#undef TFMPS_CAST
  RegisterVariableOps<float>(type);
  RegisterVariableOps<Eigen::half>(type);
  RegisterVariableOps<Eigen::bfloat16>(type);
  RegisterVariableOps<double>(type);
  RegisterVariableOps<int32_t>(type);
  RegisterVariableOps<int64_t>(type, /*assign_update=*/false);  // TensorFlow registers those for every device
}

}  // namespace

bool RegisterDeviceKernels() {
  const char* type = device::ConfiguredDeviceType(nullptr);
  if (type == nullptr) return false;
  RegisterStandard(type);
  optim::RegisterDeviceKernels(type);
  conv::RegisterDeviceKernels(type);
  pool::RegisterDeviceKernels(type);
  norm::RegisterDeviceKernels(type);
  dense::RegisterDeviceKernels(type);
  return true;
}

namespace {
const bool registered = RegisterDeviceKernels();
}  // namespace

}  // namespace device_glue
}  // namespace tfmps
