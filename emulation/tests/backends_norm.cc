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

// NormBackwardMetal: ((code, message), dx, dgamma, dbeta). mean_backprop /
// variance_backprop of size 0: none (nullptr). Outputs start as -7.
py::tuple Backward(F32 dy, F32 x, F32 gamma, F32 mean, F32 inv_std, F32 mean_backprop, F32 variance_backprop,
                   bool training, bool instance, size_t offset, bool stream) {
  const tfmps::norm::NormShape s = ViewOf(x, instance);
  const int64_t stats = instance ? s.groups * s.channels : s.channels;
  if (dy.size() != x.size() || gamma.size() != s.channels || mean.size() != stats || inv_std.size() != stats ||
      (mean_backprop.size() != 0 && mean_backprop.size() != stats) ||
      (variance_backprop.size() != 0 && variance_backprop.size() != stats)) {
    throw std::invalid_argument("norm: dy like x, gamma [C], mean, inv_std (and the backprops) like the statistics");
  }
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  F32 dx = Filled(shape, -7.0f), dgamma = Filled({s.channels}, -7.0f), dbeta = Filled({s.channels}, -7.0f);
  Stage stage{offset, {}};
  tfmps::norm::BackwardArgs a;
  a.dtype = tfmps::norm::DataType::kFloat32;
  a.training = training;
  a.dy = stage.Add(dy, /*optional=*/true);
  a.x = stage.Add(x, /*optional=*/true);
  a.gamma = stage.Add(gamma);
  a.mean = stage.Add(mean);
  a.inv_std = stage.Add(inv_std);
  a.mean_backprop = stage.Add(mean_backprop, /*optional=*/true);
  a.variance_backprop = stage.Add(variance_backprop, /*optional=*/true);
  a.dx = stage.Add(dx, /*optional=*/true);
  a.gamma_backprop = stage.Add(dgamma);
  a.beta_backprop = stage.Add(dbeta);
  BackendStatus st =
      NoGil([&] { return OnStream(stream, [&] { return tfmps::norm::NormBackwardMetal(s, a, instance); }); });
  if (st.ok()) stage.Commit();
  return py::make_tuple(Result(st), dx, dgamma, dbeta);
}

}  // namespace

void BindNorm(py::module_& m) {
  m.def("norm_forward", &Forward, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("mean"),
        py::arg("variance"), py::arg("epsilon"), py::arg("instance") = false, py::arg("offset") = 0,
        py::arg("stream") = false,
        "NormForwardMetal: ((code, message), y, mean, variance, inv_std); mean/variance empty: training");
  m.def("norm_backward", &Backward, py::arg("dy"), py::arg("x"), py::arg("gamma"), py::arg("mean"),
        py::arg("inv_std"), py::arg("mean_backprop"), py::arg("variance_backprop"), py::arg("training") = true,
        py::arg("instance") = false, py::arg("offset") = 0, py::arg("stream") = false,
        "NormBackwardMetal: ((code, message), dx, dgamma, dbeta); the backprops empty: none");
}

}  // namespace tfmps_test
