// Helpers shared by every family's TensorFlow glue (the *_ops.cc files): thread pool,
// argument naming for error messages, scalar inputs, and locked access to resource
// variables. Only glue includes this file; backends never see TensorFlow types.
#ifndef TFMPS_COMMON_TF_GLUE_H_
#define TFMPS_COMMON_TF_GLUE_H_

#include <string>
#include <utility>
#include <vector>

#include "ops/common/backend.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

// Op definitions of a family's *_ops.cc. The file is built a second time into the device
// kernels library (ops/device/, with TFMPS_DEVICE_KERNELS): there the ops are the op
// library's, so the definitions are built but not registered again.
#ifdef TFMPS_DEVICE_KERNELS
#define TFMPS_CAT2(a, b) a##b
#define TFMPS_CAT(a, b) TFMPS_CAT2(a, b)
#define TFMPS_REGISTER_OP(name)                                                                           \
  [[maybe_unused]] static ::tensorflow::register_op::OpDefBuilderWrapper TFMPS_CAT(tfmps_op_, __COUNTER__) = \
      ::tensorflow::register_op::OpDefBuilderWrapper(name)
#else
#define TFMPS_REGISTER_OP(name) REGISTER_OP(name)
#endif

namespace tfmps {
namespace tfglue {

// TF's intra-op thread pool as the backends' ParallelFor.
ParallelFor CpuParallelFor(tensorflow::OpKernelContext* ctx);

// A named group of consecutive inputs: a list ("vars", 3 entries -> "vars[0]".."vars[2]")
// or a single input ("var"). Used to name arguments in error messages.
struct ArgGroup {
  std::string name;
  int first = 0;  // flat input index of entry 0
  int count = 1;
  bool is_list = false;

  std::string Label(int i) const {
    return is_list ? name + "[" + std::to_string(i) + "]" : name;
  }
  int Index(int i) const { return first + i; }
};

// Reads a scalar input of type T ("lr", ...), failing with InvalidArgument naming it.
template <typename T>
absl::Status GetScalar(tensorflow::OpKernelContext* ctx, int index, const char* name, T* out) {
  const tensorflow::Tensor& t = ctx->input(index);
  if (!tensorflow::TensorShapeUtils::IsScalar(t.shape())) {
    return absl::InvalidArgumentError(absl::StrCat(
        ctx->op_kernel().type_string(), ": ", name, " must be a scalar, got shape ",
        t.shape().DebugString()));
  }
  *out = t.scalar<T>()();
  return absl::OkStatus();
}

// The resource variables named by a set of ArgGroups, looked up once, checked to be
// distinct, initialized and of dtype `dtype`, then locked exclusively in address order
// (so two ops over overlapping lists cannot deadlock) until this object dies. Before
// handing out a tensor it makes sure nobody else holds its buffer (copy-on-write, as
// TensorFlow's own training ops do), so an in-place update never changes a value some
// reader already has.
class LockedVariables {
 public:
  LockedVariables() = default;
  ~LockedVariables();
  LockedVariables(const LockedVariables&) = delete;
  LockedVariables& operator=(const LockedVariables&) = delete;

  absl::Status Acquire(tensorflow::OpKernelContext* ctx, const std::vector<ArgGroup>& groups,
                       tensorflow::DataType dtype);

  // The updatable tensor of entry i of group g (in the order given to Acquire).
  tensorflow::Tensor* tensor(int g, int i) { return vars_[offsets_[g] + i]->tensor(); }

 private:
  std::vector<tensorflow::core::RefCountPtr<tensorflow::Var>> vars_;
  std::vector<int> offsets_;
  std::vector<tsl::mutex*> locked_;
};

// Checks that entry i of `a` (with `shape`) and entry i of `b` (with `other`) agree;
// message: "<op>: vars[i] and grads[i] do not have the same shape: [..] vs [..]".
// Labels are only built on failure: this runs for every variable of every step.
absl::Status CheckSameShape(const tensorflow::OpKernelContext* ctx, const ArgGroup& a, const ArgGroup& b,
                            int i, const tensorflow::TensorShape& shape,
                            const tensorflow::TensorShape& other);

// Shape-function helper: merges the shapes of the variables behind resource handles
// (`handles`: flat input index and label, "vars[0]", "ms[0]", ...) with the dense shape
// at input `dense` (labelled `dense_label`, "grads[0]"), when the handles carry shape
// data, so graph construction catches mismatches before anything runs. The message is
// the kernel's: "<op>: vars[0] and grads[0] do not have the same shape: [3] vs [4]".
absl::Status MergeHandleShapes(tensorflow::shape_inference::InferenceContext* c, const std::string& op,
                               const std::vector<std::pair<int, std::string>>& handles, int dense,
                               const std::string& dense_label);

}  // namespace tfglue
}  // namespace tfmps

#endif  // TFMPS_COMMON_TF_GLUE_H_
