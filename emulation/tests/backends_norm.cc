// _tfmps_metal_emu bindings of the batch and instance normalization (ops/norm/norm_metal.mm) Metal backend: see
// backends_module.cc for the conventions (staged arrays, (code, message) results).
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "emulation/tests/backends_common.h"
#include "ops/norm/norm.h"
#include "ops/norm/norm_metal.h"

namespace tfmps_test {
namespace {

// x's view as [G, R, C], as norm_ops.cc makes it.
tfmps::norm::NormShape ViewOf(const F32& x, bool instance) {
  const int min_rank = instance ? 3 : 2;
  if (x.ndim() < min_rank) throw std::invalid_argument("norm: x has too small a rank");
  tfmps::norm::NormShape s;
  s.channels = x.shape(x.ndim() - 1);
  s.groups = instance ? x.shape(0) : 1;
  int64_t rows = 1;
  for (int i = instance ? 1 : 0; i < x.ndim() - 1; ++i) rows *= x.shape(i);
  s.rows = rows;
  return s;
}

F32 Filled(std::vector<py::ssize_t> shape, float value) {
  F32 a(shape);
  std::fill(a.mutable_data(), a.mutable_data() + a.size(), value);
  return a;
}

// NormForwardMetal: ((code, message), y, mean, variance, inv_std). mean/variance of size
// 0: training. Outputs start as -7 (so tests see what was not written).
py::tuple Forward(F32 x, F32 gamma, F32 beta, F32 mean_in, F32 var_in, float epsilon, bool instance, size_t offset,
                  bool stream) {
  const tfmps::norm::NormShape s = ViewOf(x, instance);
  const bool training = mean_in.size() == 0;
  if (gamma.size() != s.channels || beta.size() != s.channels ||
      (!training && (mean_in.size() != s.channels || var_in.size() != s.channels))) {
    throw std::invalid_argument("norm: gamma, beta (and mean, variance in inference) must be [channels]");
  }
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  std::vector<py::ssize_t> stats = instance ? std::vector<py::ssize_t>{s.groups, s.channels}
                                            : std::vector<py::ssize_t>{s.channels};
  F32 y = Filled(shape, -7.0f), mean = Filled(stats, -7.0f), variance = Filled(stats, -7.0f),
      inv_std = Filled(stats, -7.0f);
  Stage stage{offset, {}};
  tfmps::norm::ForwardArgs a;
  a.dtype = tfmps::norm::DataType::kFloat32;
  a.x = stage.Add(x, /*optional=*/true);
  a.gamma = stage.Add(gamma);
  a.beta = stage.Add(beta);
  a.mean_in = training ? nullptr : stage.Add(mean_in);
  a.var_in = training ? nullptr : stage.Add(var_in);
  a.epsilon = epsilon;
  a.y = stage.Add(y, /*optional=*/true);
  a.mean = stage.Add(mean);
  a.variance = stage.Add(variance);
  a.inv_std = stage.Add(inv_std);
  BackendStatus st =
      NoGil([&] { return OnStream(stream, [&] { return tfmps::norm::NormForwardMetal(s, a, instance); }); });
  if (st.ok()) stage.Commit();
  return py::make_tuple(Result(st), y, mean, variance, inv_std);
}

}  // namespace

void BindNorm(py::module_& m) {
  m.def("norm_forward", &Forward, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("mean"),
        py::arg("variance"), py::arg("epsilon"), py::arg("instance") = false, py::arg("offset") = 0,
        py::arg("stream") = false,
        "NormForwardMetal: ((code, message), y, mean, variance, inv_std); mean/variance empty: training");
}

}  // namespace tfmps_test
