// MpsBuildInfo: what this op library was built for and with, as a JSON string. Read by
// `python -m tf_mps` (the environment report) and by the loader's version check.
#include <string>

#include "ops/common/blas.h"
#include "ops/common/tf_glue.h"
#include "ops/convert/convert.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfmps {
namespace {

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      out += ' ';
    } else {
      out += ch;
    }
  }
  return out;
}

class BuildInfoOp : public tensorflow::OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(tensorflow::OpKernelContext* ctx) override {
    std::string json = "{";
    json += "\"tf_version_built\": \"" TFMPS_TF_VERSION "\"";
    json += ", \"backends\": [\"cpu\"";
#if defined(TFMPS_HAVE_METAL)
    json += ", \"metal\"";
#endif
    json += "]";
    json += ", \"blas\": \"" + JsonEscape(blas::Description()) + "\"";
    json += ", \"blas_threads\": " + std::to_string(blas::NumThreads());
    json += ", \"convert_isa\": \"" + std::string(convert::ConvertCpuIsa()) + "\"";
    json += ", \"compiler\": \"" + JsonEscape(__VERSION__) + "\"";
    json += "}";
    tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tensorflow::TensorShape({}), &out));
    out->scalar<tensorflow::tstring>()() = json;
  }
};

}  // namespace

REGISTER_OP("MpsBuildInfo")
    .Output("info: string")
    .SetShapeFn(tensorflow::shape_inference::ScalarShape)
    .Doc("JSON description of the tf-mps op library: TF version built for, backends, BLAS.");

REGISTER_KERNEL_BUILDER(Name("MpsBuildInfo").Device(tensorflow::DEVICE_CPU), BuildInfoOp);

}  // namespace tfmps
