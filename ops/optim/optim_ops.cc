// TensorFlow glue of the optim family: op definitions with shape functions, argument
// validation, and dispatch to the backends declared in optim.h.
//
// Each rule exists twice: a single-variable op (MpsApplyAdam: var, m, v, ...) and a
// multi-tensor op (MpsMultiApplyAdam: vars, ms, vs, ... lists of N) that updates a whole
// list in one call. Both share one kernel: their flat input layout is the same with N = 1.
//
// Hyper-parameters that Keras keeps as Python floats (beta1, beta2, epsilon, rho,
// momentum) are float64 scalar inputs, so the kernel rounds derived constants such as
// 1 - beta1 exactly as Keras does; lr has the variables' dtype, like Keras's cast. All
// are inputs, never attributes: a schedule may change them every step.
//
// Optional slots (Adam's vhats, SGD's momentums, RMSProp's mgs and moms) are lists whose
// length attribute is 0 (option off) or N (option on). The squared-gradient sums of
// sparse gradients (grads_sq, Adam and RMSProp) belong to the variables listed in the
// attribute sq_vars, so one call updates dense and sparse gradients together: a call is
// one op, validated completely before anything is written (all or nothing).
//
// T is half, bfloat16, float or double; the backends see Half/BFloat16 (optim.h), the
// same bits as Eigen::half/Eigen::bfloat16.
#include <string>
#include <type_traits>
#include <vector>

#include "ops/common/tf_glue.h"
#include "ops/optim/optim.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#ifdef TFMPS_DEVICE_KERNELS
// Built a second time into the device kernels library (ops/device/): the ops are the op
// library's (TFMPS_REGISTER_OP, tf_glue.h), and the kernels are registered for the device
// at load time (RegisterDeviceKernels at the end).
#include "ops/device/device_kernels_glue.h"
#endif

namespace tfmps {
namespace optim {
namespace {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;
using tfglue::ArgGroup;

// MPSNNOptimizerDescriptor's gradient options and the update semantics (optim.h).
constexpr char kAttrT[] = "T: {half, bfloat16, float, double}";
constexpr char kAttrSemantics[] = "semantics: {'keras', 'mps'} = 'keras'";
constexpr char kAttrRescale[] = "gradient_rescale: float = 1.0";
constexpr char kAttrClip[] = "clip_gradient: bool = false";
constexpr char kAttrClipMin[] = "gradient_clip_min: float = 0.0";
constexpr char kAttrClipMax[] = "gradient_clip_max: float = 0.0";
constexpr char kAttrReg[] = "regularization: {'none', 'l1', 'l2'} = 'none'";
constexpr char kAttrRegScale[] = "regularization_scale: float = 0.0";
// Which variables the grads_sq entries belong to (see SquaresOwners).
constexpr char kAttrSqVars[] = "sq_vars: list(int) = []";

// The resource groups of one rule: for each, the single op's input name, the multi op's,
// and the length attribute of an optional group (nullptr: always N entries).
struct SlotSpec {
  const char* single;
  const char* list;
  const char* len_attr;
};

// Named positions: resource groups in the order of the SlotSpecs below, scalars in the
// order of the scalar inputs.
enum AdamGroup { kAdamVar, kAdamM, kAdamV, kAdamVhat };
enum SgdGroup { kSgdVar, kSgdMomentum };
enum RmsPropGroup { kRmsVar, kRmsMs, kRmsMg, kRmsMom };
enum AdamScalar { kAdamLr, kAdamStep, kAdamBeta1, kAdamBeta2, kAdamEpsilon };
enum SgdScalar { kSgdLr, kSgdMomentumValue };
enum RmsPropScalar { kRmsLr, kRmsRho, kRmsMomentumValue, kRmsEpsilon };

const std::vector<SlotSpec> kAdamSlots = {
    {"var", "vars", nullptr}, {"m", "ms", nullptr}, {"v", "vs", nullptr}, {"vhat", "vhats", "M"}};
const std::vector<SlotSpec> kSgdSlots = {{"var", "vars", nullptr}, {"momentum_slot", "momentums", "M"}};
const std::vector<SlotSpec> kRmsPropSlots = {
    {"var", "vars", nullptr}, {"ms", "mss", nullptr}, {"mg", "mgs", "C"}, {"mom", "moms", "K"}};

// Scalars following the gradients, with their names (for messages).
// (constexpr: constant-initialized, so the device kernels' registration, which runs during
// another file's static initialization, sees them filled.)
constexpr const char* kAdamScalars[] = {"lr", "step", "beta1", "beta2", "epsilon"};
constexpr const char* kSgdScalars[] = {"lr", "momentum"};
constexpr const char* kRmsPropScalars[] = {"lr", "rho", "momentum", "epsilon"};

// Lengths of the resource groups: N, or 0/N for optional groups. `op` names the op in
// messages. Used by both the shape function and the kernel constructor.
template <typename Ctx>
absl::Status GroupLengths(Ctx* c, const std::string& op, const std::vector<SlotSpec>& slots,
                          bool multi, int* n, std::vector<int>* lens) {
  *n = 1;
  if (multi) TF_RETURN_IF_ERROR(c->GetAttr("N", n));
  lens->clear();
  for (const SlotSpec& s : slots) {
    int len = *n;
    if (s.len_attr != nullptr) {
      TF_RETURN_IF_ERROR(c->GetAttr(s.len_attr, &len));
      if (len != 0 && len != *n) {
        return absl::InvalidArgumentError(absl::StrCat(op, ": ", multi ? s.list : s.single,
                                                       " must hold 0 or ", *n, " variables, got ", len));
      }
    }
    lens->push_back(len);
  }
  return absl::OkStatus();
}

// The variables the grads_sq entries belong to (attr sq_vars; empty: entry j belongs
// to variable j, and there are 0 or N entries). Used by the shape function and the kernel.
template <typename Ctx>
absl::Status SquaresOwners(Ctx* c, const std::string& op, bool multi, int n, std::vector<int>* owners) {
  int len = 0;
  std::vector<int64_t> sq_vars;
  TF_RETURN_IF_ERROR(c->GetAttr("S", &len));
  TF_RETURN_IF_ERROR(c->GetAttr("sq_vars", &sq_vars));
  const char* name = multi ? "grads_sq" : "grad_sq";
  owners->clear();
  if (sq_vars.empty()) {
    if (len != 0 && len != n) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must hold 0 or ", n,
                                                     " tensors (or one per entry of sq_vars), got ", len));
    }
    for (int j = 0; j < len; ++j) owners->push_back(j);
    return absl::OkStatus();
  }
  if (static_cast<int>(sq_vars.size()) != len) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " must hold one tensor per entry of sq_vars (",
                                                   sq_vars.size(), "), got ", len));
  }
  for (size_t j = 0; j < sq_vars.size(); ++j) {
    if (sq_vars[j] < 0 || sq_vars[j] >= n || (j > 0 && sq_vars[j] <= sq_vars[j - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": sq_vars must be increasing variable indices in [0, ", n,
                                                     "), got ", sq_vars[j], " at position ", j));
    }
    owners->push_back(static_cast<int>(sq_vars[j]));
  }
  return absl::OkStatus();
}

// Shape function: optional groups hold 0 or N, each gradient matches its variable's and
// slots' shapes wherever the handles carry shapes, each squared-gradient sum matches its
// gradient, and the trailing inputs are scalars.

std::function<absl::Status(InferenceContext*)> RuleShapeFn(const char* op,
                                                            const std::vector<SlotSpec>* slots,
                                                            bool has_sq, int num_scalars, bool multi) {
  return [=](InferenceContext* c) -> absl::Status {
    int n;
    std::vector<int> lens, owners;
    TF_RETURN_IF_ERROR(GroupLengths(c, op, *slots, multi, &n, &lens));
    if (has_sq) TF_RETURN_IF_ERROR(SquaresOwners(c, op, multi, n, &owners));
    const int sq = static_cast<int>(owners.size());
    int first_grad = 0;
    for (int len : lens) first_grad += len;
    // Named as the kernel names them: "vars[0]", "ms[0]", "grads[0]" (multi), "var", "m"...
    auto label = [multi](const char* single, const char* list, int i) {
      return multi ? absl::StrCat(list, "[", i, "]") : std::string(single);
    };
    for (int i = 0; i < n; ++i) {
      std::vector<std::pair<int, std::string>> handles;
      int base = 0;
      for (size_t g = 0; g < lens.size(); ++g) {
        if (lens[g] > 0) handles.emplace_back(base + i, label((*slots)[g].single, (*slots)[g].list, i));
        base += lens[g];
      }
      TF_RETURN_IF_ERROR(tfglue::MergeHandleShapes(c, op, handles, first_grad + i, label("grad", "grads", i)));
    }
    for (int j = 0; j < sq; ++j) {
      ShapeHandle merged;
      const int i = owners[j];
      if (!c->Merge(c->input(first_grad + i), c->input(first_grad + n + j), &merged).ok()) {
        return absl::InvalidArgumentError(absl::StrCat(op, ": ", label("grad", "grads", i), " and ",
                                                       label("grad_sq", "grads_sq", j),
                                                       " do not have the same shape: ",
                                                       c->DebugString(c->input(first_grad + i)), " vs ",
                                                       c->DebugString(c->input(first_grad + n + j))));
      }
    }
    ShapeHandle unused;
    for (int k = 0; k < num_scalars; ++k) {
      TF_RETURN_IF_ERROR(c->WithRank(c->input(first_grad + n + sq + k), 0, &unused));
    }
    return absl::OkStatus();
  };
}

}  // namespace

// ----------------------------------------------------------------------------- Adam
TFMPS_REGISTER_OP("MpsApplyAdam")
    .Input("var: resource").Input("m: resource").Input("v: resource").Input("vhat: M * resource")
    .Input("grad: T").Input("grad_sq: S * T")
    .Input("lr: T").Input("step: int64").Input("beta1: double").Input("beta2: double")
    .Input("epsilon: double")
    .Attr("M: int >= 0").Attr("S: int >= 0").Attr(kAttrSqVars)
    .Attr(kAttrT).Attr(kAttrSemantics).Attr(kAttrRescale).Attr(kAttrClip).Attr(kAttrClipMin)
    .Attr(kAttrClipMax).Attr(kAttrReg).Attr(kAttrRegScale)
    .SetShapeFn(RuleShapeFn("MpsApplyAdam", &kAdamSlots, true, 5, false))
    .Doc(R"doc(
Adam (AMSGrad when `vhat` is given) on one resource variable, in place. See
tf_mps.ops.apply_adam for the update rules of both semantics.
)doc");

TFMPS_REGISTER_OP("MpsMultiApplyAdam")
    .Input("vars: N * resource").Input("ms: N * resource").Input("vs: N * resource")
    .Input("vhats: M * resource")
    .Input("grads: N * T").Input("grads_sq: S * T")
    .Input("lr: T").Input("step: int64").Input("beta1: double").Input("beta2: double")
    .Input("epsilon: double")
    .Attr("N: int >= 1").Attr("M: int >= 0").Attr("S: int >= 0").Attr(kAttrSqVars)
    .Attr(kAttrT).Attr(kAttrSemantics).Attr(kAttrRescale).Attr(kAttrClip).Attr(kAttrClipMin)
    .Attr(kAttrClipMax).Attr(kAttrReg).Attr(kAttrRegScale)
    .SetShapeFn(RuleShapeFn("MpsMultiApplyAdam", &kAdamSlots, true, 5, true))
    .Doc(R"doc(
Adam (AMSGrad when `vhats` is given) on N resource variables in one call, in place.
)doc");

// ------------------------------------------------------------------------------ SGD
TFMPS_REGISTER_OP("MpsApplySgd")
    .Input("var: resource").Input("momentum_slot: M * resource")
    .Input("grad: T")
    .Input("lr: T").Input("momentum: double")
    .Attr("M: int >= 0").Attr("nesterov: bool = false")
    .Attr(kAttrT).Attr(kAttrSemantics).Attr(kAttrRescale).Attr(kAttrClip).Attr(kAttrClipMin)
    .Attr(kAttrClipMax).Attr(kAttrReg).Attr(kAttrRegScale)
    .SetShapeFn(RuleShapeFn("MpsApplySgd", &kSgdSlots, false, 2, false))
    .Doc("SGD (momentum when `momentum_slot` is given, Nesterov if `nesterov`) on one variable.");

TFMPS_REGISTER_OP("MpsMultiApplySgd")
    .Input("vars: N * resource").Input("momentums: M * resource")
    .Input("grads: N * T")
    .Input("lr: T").Input("momentum: double")
    .Attr("N: int >= 1").Attr("M: int >= 0").Attr("nesterov: bool = false")
    .Attr(kAttrT).Attr(kAttrSemantics).Attr(kAttrRescale).Attr(kAttrClip).Attr(kAttrClipMin)
    .Attr(kAttrClipMax).Attr(kAttrReg).Attr(kAttrRegScale)
    .SetShapeFn(RuleShapeFn("MpsMultiApplySgd", &kSgdSlots, false, 2, true))
    .Doc("SGD on N resource variables in one call, in place.");

// -------------------------------------------------------------------------- RMSProp
TFMPS_REGISTER_OP("MpsApplyRmsProp")
    .Input("var: resource").Input("ms: resource").Input("mg: C * resource").Input("mom: K * resource")
    .Input("grad: T").Input("grad_sq: S * T")
    .Input("lr: T").Input("rho: double").Input("momentum: double").Input("epsilon: double")
    .Attr("C: int >= 0").Attr("K: int >= 0").Attr("S: int >= 0").Attr(kAttrSqVars)
    .Attr(kAttrT).Attr(kAttrSemantics).Attr(kAttrRescale).Attr(kAttrClip).Attr(kAttrClipMin)
    .Attr(kAttrClipMax).Attr(kAttrReg).Attr(kAttrRegScale)
    .SetShapeFn(RuleShapeFn("MpsApplyRmsProp", &kRmsPropSlots, true, 4, false))
    .Doc("RMSProp (centered when `mg` is given, momentum when `mom` is given) on one variable.");

TFMPS_REGISTER_OP("MpsMultiApplyRmsProp")
    .Input("vars: N * resource").Input("mss: N * resource").Input("mgs: C * resource")
    .Input("moms: K * resource")
    .Input("grads: N * T").Input("grads_sq: S * T")
    .Input("lr: T").Input("rho: double").Input("momentum: double").Input("epsilon: double")
    .Attr("N: int >= 1").Attr("C: int >= 0").Attr("K: int >= 0").Attr("S: int >= 0").Attr(kAttrSqVars)
    .Attr(kAttrT).Attr(kAttrSemantics).Attr(kAttrRescale).Attr(kAttrClip).Attr(kAttrClipMin)
    .Attr(kAttrClipMax).Attr(kAttrReg).Attr(kAttrRegScale)
    .SetShapeFn(RuleShapeFn("MpsMultiApplyRmsProp", &kRmsPropSlots, true, 4, true))
    .Doc("RMSProp on N resource variables in one call, in place.");

// ------------------------------------------------------------ sparse gradients
// The Python layer sums an IndexedSlices gradient into a dense one with TensorFlow's
// unsorted_segment_sum (Keras's own conversion, so the sums round alike). That op drops
// negative indices and reshapes rows silently; TensorFlow's scatter ops, which Keras's
// sparse updates use, reject both. This op checks first and passes the indices on, so
// the sum (and the update, which consumes it) cannot run on unchecked input.
TFMPS_REGISTER_OP("MpsCheckSparseGradient")
    .Input("indices: Tindices").Input("values_shape: int64").Input("var_shape: int64")
    .Output("checked_indices: Tindices")
    .Attr("Tindices: {int32, int64}")
    .Attr("label: string = ''")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Checks an IndexedSlices gradient against its variable's shape and returns its indices:
indices a vector, values.shape == indices.shape + var_shape[1:] (TensorFlow's scatter
rule), every index in [0, var_shape[0]). `label` names the gradient in messages.
)doc");

// -------------------------------------------------------------------------- kernels
namespace {

class CheckSparseGradientOp : public OpKernel {
 public:
  explicit CheckSparseGradientOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("label", &label_));
    if (label_.empty()) label_ = type_string();
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& indices = ctx->input(0);
    const Tensor& values_shape = ctx->input(1);
    const Tensor& var_shape = ctx->input(2);
    OP_REQUIRES(ctx, tensorflow::TensorShapeUtils::IsVector(values_shape.shape()) &&
                         tensorflow::TensorShapeUtils::IsVector(var_shape.shape()),
                absl::InvalidArgumentError(absl::StrCat(label_, ": values_shape and var_shape must be vectors, got ",
                                                        values_shape.shape().DebugString(), " and ",
                                                        var_shape.shape().DebugString())));
    const auto vs = values_shape.vec<int64_t>();
    const auto ps = var_shape.vec<int64_t>();
    OP_REQUIRES(ctx, ps.size() >= 1,
                absl::InvalidArgumentError(absl::StrCat(
                    label_, ": a sparse (IndexedSlices) gradient needs a variable of rank >= 1, got a scalar")));
    OP_REQUIRES(ctx, tensorflow::TensorShapeUtils::IsVector(indices.shape()),
                absl::InvalidArgumentError(absl::StrCat(label_, ": the indices of an IndexedSlices gradient must be "
                                                        "a vector, got shape ", indices.shape().DebugString())));
    // TensorFlow's scatter rule: updates.shape = indices.shape + params.shape[1:].
    bool ok = vs.size() == ps.size() && vs(0) == indices.NumElements();
    for (int64_t d = 1; ok && d < ps.size(); ++d) ok = vs(d) == ps(d);
    if (!ok) {
      auto dims = [](const decltype(vs)& v) {
        std::string out = "[";
        for (int64_t d = 0; d < v.size(); ++d) absl::StrAppend(&out, d ? "," : "", v(d));
        return out + "]";
      };
      ctx->CtxFailure(absl::InvalidArgumentError(absl::StrCat(
          label_, ": Must have updates.shape = indices.shape + params.shape[1:], got updates.shape ",
          dims(vs), ", indices.shape ", indices.shape().DebugString(), ", params.shape ", dims(ps),
          " (the IndexedSlices gradient's values, indices and variable)")));
      return;
    }
    if (indices.dtype() == tensorflow::DT_INT32) {
      CheckRange<int32_t>(ctx, indices, ps(0));
    } else {
      CheckRange<int64_t>(ctx, indices, ps(0));
    }
    if (ctx->status().ok()) ctx->set_output(0, indices);
  }

 private:
  template <typename Index>
  void CheckRange(OpKernelContext* ctx, const Tensor& indices, int64_t limit) {
    const auto flat = indices.flat<Index>();
    for (int64_t i = 0; i < flat.size(); ++i) {
      const int64_t k = flat(i);
      // TensorFlow's scatter ops word it so ("indices[0] = 6 is not in [0, 6)").
      OP_REQUIRES(ctx, k >= 0 && k < limit,
                  absl::InvalidArgumentError(absl::StrCat(label_, ": indices[", i, "] = ", k, " is not in [0, ",
                                                          limit, ")")));
    }
  }

  std::string label_;
};

#ifndef TFMPS_DEVICE_KERNELS
REGISTER_KERNEL_BUILDER(Name("MpsCheckSparseGradient").Device(DEVICE_CPU), CheckSparseGradientOp);
#endif

// The backends' element type for TensorFlow's: Half/BFloat16 carry the bits of
// Eigen::half/Eigen::bfloat16 (optim.h), so their data is handed over as it is.
template <typename T>
struct BackendType {
  using type = T;
};
template <>
struct BackendType<Eigen::half> {
  using type = Half;
};
template <>
struct BackendType<Eigen::bfloat16> {
  using type = BFloat16;
};
static_assert(sizeof(Eigen::half) == sizeof(Half) && sizeof(Eigen::bfloat16) == sizeof(BFloat16),
              "16-bit storage must match TensorFlow's");

template <typename T>
using B = typename BackendType<T>::type;

template <typename T>
B<T>* BackendData(Tensor* t) {
  return reinterpret_cast<B<T>*>(t->template flat<T>().data());
}
template <typename T>
const B<T>* BackendData(const Tensor& t) {
  return reinterpret_cast<const B<T>*>(t.template flat<T>().data());
}

// Runs a rule's backend: the CPU backend on TF's threads; on the tf-mps device
// (TFMPS_DEVICE_KERNELS) the Metal backend in the kernel's stream for float, and the CPU
// backend after the stream's queued work where Metal declines (other dtypes, what MPS's
// classes and tf-mps's kernels do not express; optim.h).
template <typename T, typename MetalFn, typename CpuFn>
void RunBackend(OpKernelContext* ctx, MetalFn metal, CpuFn cpu) {
#ifdef TFMPS_DEVICE_KERNELS
  device_glue::Run(
      ctx,
      [&]() -> BackendStatus {
        if constexpr (std::is_same_v<T, float>) {
          return metal();
        } else {
          return BackendStatus::Unsupported("not float");
        }
      },
      cpu);
#else
  (void)metal;
  cpu();
#endif
}

// The variables of one Compute call, locked for its duration. Kernels are shared
// between concurrent calls, so this lives on the stack, never in the kernel.
template <typename T>
class Slots {
 public:
  Slots(const std::vector<ArgGroup>* groups) : groups_(groups) {}
  tfglue::LockedVariables& locked() { return locked_; }
  // Data of slot group g entry i, or nullptr when that optional group is empty.
  B<T>* operator()(int g, int i) {
    return (*groups_)[g].count == 0 ? nullptr : BackendData<T>(locked_.tensor(g, i));
  }
  int64_t size(int i) { return locked_.tensor(0, i)->NumElements(); }

 private:
  const std::vector<ArgGroup>* groups_;
  tfglue::LockedVariables locked_;
};

// What every optimizer kernel shares: attributes, the flat input layout, and validation
// of variables, slots and gradients. Subclasses read their scalars and call a backend.
// The Metal backends take float; other dtypes never reach them (RunBackend).
#ifdef TFMPS_DEVICE_KERNELS
template <typename V>
BackendStatus AdamMetalIfFloat(const AdamParams& p, const std::vector<V>& vars) {
  if constexpr (std::is_same_v<V, AdamSlots<float>>) return AdamMetal(p, vars);
  return BackendStatus::Unsupported("not float");
}
template <typename V>
BackendStatus SgdMetalIfFloat(const SgdParams& p, const std::vector<V>& vars) {
  if constexpr (std::is_same_v<V, SgdSlots<float>>) return SgdMetal(p, vars);
  return BackendStatus::Unsupported("not float");
}
template <typename V>
BackendStatus RmsPropMetalIfFloat(const RmsPropParams& p, const std::vector<V>& vars) {
  if constexpr (std::is_same_v<V, RmsPropSlots<float>>) return RmsPropMetal(p, vars);
  return BackendStatus::Unsupported("not float");
}
#else
template <typename P, typename V>
BackendStatus NoMetal(const P&, const V&) {
  return BackendStatus::Unsupported("CPU device");
}
#define AdamMetalIfFloat NoMetal
#define SgdMetalIfFloat NoMetal
#define RmsPropMetalIfFloat NoMetal
#endif

template <typename T>
class OptimizerKernel : public OpKernel {
 public:
  OptimizerKernel(OpKernelConstruction* c, const std::vector<SlotSpec>& slots, bool has_sq, bool multi)
      : OpKernel(c) {
    const std::string op = type_string();
    std::vector<int> lens;
    OP_REQUIRES_OK(c, GroupLengths(c, op, slots, multi, &n_, &lens));
    int index = 0;
    for (size_t g = 0; g < slots.size(); ++g) {
      groups_.push_back({multi ? slots[g].list : slots[g].single, index, lens[g], multi});
      index += lens[g];
    }
    grads_ = {multi ? "grads" : "grad", index, n_, multi};
    std::vector<int> owners;
    if (has_sq) OP_REQUIRES_OK(c, SquaresOwners(c, op, multi, n_, &owners));
    const int sq = static_cast<int>(owners.size());
    grads_sq_ = {multi ? "grads_sq" : "grad_sq", index + n_, sq, multi};
    sq_of_var_.assign(n_, -1);
    for (int j = 0; j < sq; ++j) sq_of_var_[owners[j]] = j;
    first_scalar_ = index + n_ + sq;

    std::string semantics, regularization;
    OP_REQUIRES_OK(c, c->GetAttr("semantics", &semantics));
    semantics_ = semantics == "mps" ? Semantics::kMps : Semantics::kKeras;
    OP_REQUIRES_OK(c, c->GetAttr("gradient_rescale", &gradient_.rescale));
    OP_REQUIRES_OK(c, c->GetAttr("clip_gradient", &gradient_.clip));
    OP_REQUIRES_OK(c, c->GetAttr("gradient_clip_min", &gradient_.clip_min));
    OP_REQUIRES_OK(c, c->GetAttr("gradient_clip_max", &gradient_.clip_max));
    OP_REQUIRES_OK(c, c->GetAttr("regularization", &regularization));
    gradient_.regularization = regularization == "l1"   ? Regularization::kL1
                               : regularization == "l2" ? Regularization::kL2
                                                        : Regularization::kNone;
    OP_REQUIRES_OK(c, c->GetAttr("regularization_scale", &gradient_.regularization_scale));
    OP_REQUIRES(c, !gradient_.clip || gradient_.clip_min <= gradient_.clip_max,
                absl::InvalidArgumentError(absl::StrCat(
                    op, ": gradient_clip_min must be <= gradient_clip_max, got ",
                    gradient_.clip_min, " > ", gradient_.clip_max)));
  }

 protected:
  // Looks up, locks and validates every variable and slot against the gradients.
  absl::Status Acquire(OpKernelContext* ctx, Slots<T>* slots) const {
    tfglue::LockedVariables& locked = slots->locked();
    TF_RETURN_IF_ERROR(locked.Acquire(ctx, groups_, tensorflow::DataTypeToEnum<T>::value));
    for (int i = 0; i < n_; ++i) {
      const tensorflow::TensorShape& var_shape = locked.tensor(0, i)->shape();
      for (size_t g = 1; g < groups_.size(); ++g) {
        if (groups_[g].count == 0) continue;
        TF_RETURN_IF_ERROR(tfglue::CheckSameShape(ctx, groups_[0], groups_[g], i, var_shape,
                                                  locked.tensor(g, i)->shape()));
      }
      TF_RETURN_IF_ERROR(tfglue::CheckSameShape(ctx, groups_[0], grads_, i, var_shape,
                                                ctx->input(grads_.Index(i)).shape()));
      const int j = sq_of_var_[i];
      if (j >= 0 && var_shape != ctx->input(grads_sq_.Index(j)).shape()) {
        return absl::InvalidArgumentError(absl::StrCat(
            type_string(), ": ", groups_[0].Label(i), " and ", grads_sq_.Label(j),
            " do not have the same shape: ", var_shape.DebugString(), " vs ",
            ctx->input(grads_sq_.Index(j)).shape().DebugString()));
      }
    }
    return absl::OkStatus();
  }

  const B<T>* grad(OpKernelContext* ctx, int i) const { return BackendData<T>(ctx->input(grads_.Index(i))); }
  // The squared-gradient sum of variable i, or nullptr when it has none.
  const B<T>* grad_sq(OpKernelContext* ctx, int i) const {
    const int j = sq_of_var_[i];
    return j < 0 ? nullptr : BackendData<T>(ctx->input(grads_sq_.Index(j)));
  }
  bool has(int g) const { return groups_[g].count > 0; }
  // Scalar input k (0-based, after the gradients), named for messages.
  template <typename S>
  absl::Status Scalar(OpKernelContext* ctx, int k, const char* name, S* out) const {
    return tfglue::GetScalar<S>(ctx, first_scalar_ + k, name, out);
  }

  int n_ = 1;
  int first_scalar_ = 0;
  std::vector<ArgGroup> groups_;
  ArgGroup grads_;
  ArgGroup grads_sq_;
  std::vector<int> sq_of_var_;  // per variable: its grads_sq entry, or -1
  Semantics semantics_ = Semantics::kKeras;
  GradientTransform gradient_;
};

template <typename T>
class AdamOp : public OptimizerKernel<T> {
 public:
  AdamOp(OpKernelConstruction* c, bool multi) : OptimizerKernel<T>(c, kAdamSlots, true, multi) {}

  void Compute(OpKernelContext* ctx) override {
    AdamParams p;
    T lr;
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kAdamLr, "lr", &lr));
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kAdamStep, "step", &p.step));
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kAdamBeta1, "beta1", &p.beta1));
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kAdamBeta2, "beta2", &p.beta2));
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kAdamEpsilon, "epsilon", &p.epsilon));
    OP_REQUIRES(ctx, p.step >= 1,
                absl::InvalidArgumentError(absl::StrCat(
                    this->type_string(), ": step must be >= 1 (the 1-based time step), got ", p.step)));
    p.lr = static_cast<double>(lr);
    p.amsgrad = this->has(kAdamVhat);
    p.grad_sq = this->grads_sq_.count > 0;
    p.semantics = this->semantics_;
    p.gradient = this->gradient_;

    Slots<T> s(&this->groups_);
    OP_REQUIRES_OK(ctx, this->Acquire(ctx, &s));
    std::vector<AdamSlots<B<T>>> vars(this->n_);
    for (int i = 0; i < this->n_; ++i) {
      vars[i] = {s(kAdamVar, i), s(kAdamM, i),           s(kAdamV, i),
                 s(kAdamVhat, i), this->grad(ctx, i), this->grad_sq(ctx, i), s.size(i)};
    }
    RunBackend<T>(
        ctx, [&] { return AdamMetalIfFloat(p, vars); }, [&] { AdamCpu<B<T>>(p, vars, tfglue::CpuParallelFor(ctx)); });
  }
};

template <typename T>
class SgdOp : public OptimizerKernel<T> {
 public:
  SgdOp(OpKernelConstruction* c, bool multi) : OptimizerKernel<T>(c, kSgdSlots, false, multi) {
    OP_REQUIRES_OK(c, c->GetAttr("nesterov", &nesterov_));
  }

  void Compute(OpKernelContext* ctx) override {
    SgdParams p;
    T lr;
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kSgdLr, "lr", &lr));
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kSgdMomentumValue, "momentum", &p.momentum));
    p.lr = static_cast<double>(lr);
    p.use_momentum = this->has(kSgdMomentum);
    p.nesterov = nesterov_;
    p.semantics = this->semantics_;
    p.gradient = this->gradient_;
    OP_REQUIRES(ctx, p.use_momentum || !nesterov_,
                absl::InvalidArgumentError(absl::StrCat(
                    this->type_string(), ": nesterov=True needs momentum slots (", this->groups_[kSgdMomentum].name,
                    "), got none")));

    Slots<T> s(&this->groups_);
    OP_REQUIRES_OK(ctx, this->Acquire(ctx, &s));
    std::vector<SgdSlots<B<T>>> vars(this->n_);
    for (int i = 0; i < this->n_; ++i) {
      vars[i] = {s(kSgdVar, i), s(kSgdMomentum, i), this->grad(ctx, i), s.size(i)};
    }
    RunBackend<T>(
        ctx, [&] { return SgdMetalIfFloat(p, vars); }, [&] { SgdCpu<B<T>>(p, vars, tfglue::CpuParallelFor(ctx)); });
  }

 private:
  bool nesterov_ = false;
};

template <typename T>
class RmsPropOp : public OptimizerKernel<T> {
 public:
  RmsPropOp(OpKernelConstruction* c, bool multi)
      : OptimizerKernel<T>(c, kRmsPropSlots, true, multi) {}

  void Compute(OpKernelContext* ctx) override {
    RmsPropParams p;
    T lr;
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kRmsLr, "lr", &lr));
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kRmsRho, "rho", &p.rho));
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kRmsMomentumValue, "momentum", &p.momentum));
    OP_REQUIRES_OK(ctx, this->Scalar(ctx, kRmsEpsilon, "epsilon", &p.epsilon));
    p.lr = static_cast<double>(lr);
    p.centered = this->has(kRmsMg);
    p.use_momentum = this->has(kRmsMom);
    p.grad_sq = this->grads_sq_.count > 0;
    p.semantics = this->semantics_;
    p.gradient = this->gradient_;

    Slots<T> s(&this->groups_);
    OP_REQUIRES_OK(ctx, this->Acquire(ctx, &s));
    std::vector<RmsPropSlots<B<T>>> vars(this->n_);
    for (int i = 0; i < this->n_; ++i) {
      vars[i] = {s(kRmsVar, i), s(kRmsMs, i),            s(kRmsMg, i),
                 s(kRmsMom, i), this->grad(ctx, i), this->grad_sq(ctx, i), s.size(i)};
    }
    RunBackend<T>(
        ctx, [&] { return RmsPropMetalIfFloat(p, vars); },
        [&] { RmsPropCpu<B<T>>(p, vars, tfglue::CpuParallelFor(ctx)); });
  }
};

// Registers Kernel<T> for both forms of one rule on the CPU for every dtype of kAttrT.
template <template <typename> class Kernel, bool kMulti>
struct Form {
  template <typename T>
  class K : public Kernel<T> {
   public:
    explicit K(OpKernelConstruction* c) : Kernel<T>(c, kMulti) {}
  };
};

#ifndef TFMPS_DEVICE_KERNELS
#define TFMPS_REGISTER_OPTIMIZER(NAME, KERNEL, MULTI, T)                                   \
  REGISTER_KERNEL_BUILDER(                                                                  \
      Name(NAME).Device(DEVICE_CPU).TypeConstraint<T>("T"),                                \
      Form<KERNEL, MULTI>::template K<T>)
#define TFMPS_REGISTER_RULE_T(SINGLE, MULTI_NAME, KERNEL, T) \
  TFMPS_REGISTER_OPTIMIZER(SINGLE, KERNEL, false, T);         \
  TFMPS_REGISTER_OPTIMIZER(MULTI_NAME, KERNEL, true, T)
#define TFMPS_REGISTER_RULE(SINGLE, MULTI_NAME, KERNEL)                  \
  TFMPS_REGISTER_RULE_T(SINGLE, MULTI_NAME, KERNEL, Eigen::half);        \
  TFMPS_REGISTER_RULE_T(SINGLE, MULTI_NAME, KERNEL, Eigen::bfloat16);    \
  TFMPS_REGISTER_RULE_T(SINGLE, MULTI_NAME, KERNEL, float);              \
  TFMPS_REGISTER_RULE_T(SINGLE, MULTI_NAME, KERNEL, double)

TFMPS_REGISTER_RULE("MpsApplyAdam", "MpsMultiApplyAdam", AdamOp);
TFMPS_REGISTER_RULE("MpsApplySgd", "MpsMultiApplySgd", SgdOp);
TFMPS_REGISTER_RULE("MpsApplyRmsProp", "MpsMultiApplyRmsProp", RmsPropOp);

#undef TFMPS_REGISTER_RULE
#undef TFMPS_REGISTER_RULE_T
#undef TFMPS_REGISTER_OPTIMIZER
#endif  // TFMPS_DEVICE_KERNELS


}  // namespace

#ifdef TFMPS_DEVICE_KERNELS
namespace {
template <template <typename> class Kernel, bool kMulti, typename T, size_t N>
void RegisterOne(const char* name, const char* type, const char* const (&scalars)[N]) {
  tensorflow::register_kernel::Name b(name);
  b.Device(type).TypeConstraint<T>("T");
  // The scalars are read by the host (GetScalar): TensorFlow copies them there first.
  for (const char* s : scalars) b.HostMemory(s);
  new tensorflow::kernel_factory::OpKernelRegistrar(b.Build(), name, [](OpKernelConstruction* c) -> OpKernel* {
    return new typename Form<Kernel, kMulti>::template K<T>(c);
  });
}
template <template <typename> class Kernel, size_t N>
void RegisterRule(const char* single, const char* multi, const char* type, const char* const (&scalars)[N]) {
  RegisterOne<Kernel, false, Eigen::half>(single, type, scalars);
  RegisterOne<Kernel, false, Eigen::bfloat16>(single, type, scalars);
  RegisterOne<Kernel, false, float>(single, type, scalars);
  RegisterOne<Kernel, false, double>(single, type, scalars);
  RegisterOne<Kernel, true, Eigen::half>(multi, type, scalars);
  RegisterOne<Kernel, true, Eigen::bfloat16>(multi, type, scalars);
  RegisterOne<Kernel, true, float>(multi, type, scalars);
  RegisterOne<Kernel, true, double>(multi, type, scalars);
}
}  // namespace

// Runs from the device kernels library's static initialization (device_kernels.cc), which
// may come before this file's: only constant-initialized objects may be used here (the
// scalar names were std::vectors once, still empty at that point, so the scalars lost
// their HostMemory and the kernels read lr on the host before the GPU had written it).
void RegisterDeviceKernels(const char* type) {
  RegisterRule<AdamOp>("MpsApplyAdam", "MpsMultiApplyAdam", type, kAdamScalars);
  RegisterRule<SgdOp>("MpsApplySgd", "MpsMultiApplySgd", type, kSgdScalars);
  RegisterRule<RmsPropOp>("MpsApplyRmsProp", "MpsMultiApplyRmsProp", type, kRmsPropScalars);
}
#endif  // TFMPS_DEVICE_KERNELS

}  // namespace optim
}  // namespace tfmps
