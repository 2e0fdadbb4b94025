// _tfmps_metal_emu bindings of the fully connected (ops/dense/dense_metal.mm) Metal backend: see
// backends_module.cc for the conventions (staged arrays, (code, message) results).
#include <algorithm>
#include <functional>
#include <stdexcept>
#include <vector>

#include "emulation/tests/backends_common.h"
#include "ops/dense/dense.h"
#include "ops/dense/dense_metal.h"

namespace tfmps_test {
namespace {

namespace dn = tfmps::dense;

F32 Filled(std::vector<py::ssize_t> shape, float value) {
  F32 a(shape);
  std::fill(a.mutable_data(), a.mutable_data() + a.size(), value);
  return a;
}

// x [N, K], w [K, M], bias [M] or empty.
dn::DenseDims DimsOf(const F32& x, const F32& w, const F32& bias) {
  if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.shape(0)) {
    throw std::invalid_argument("dense: x must be [N, K] and w [K, M]");
  }
  if (bias.size() != 0 && (bias.ndim() != 1 || bias.shape(0) != w.shape(1))) {
    throw std::invalid_argument("dense: bias must be [M] or empty");
  }
  dn::DenseDims d;
  d.rows = x.shape(0);
  d.in = x.shape(1);
  d.out = w.shape(1);
  return d;
}

dn::DenseConfig ConfigOf(bool relu) {
  dn::DenseConfig c;
  c.activation = relu ? dn::Activation::kRelu : dn::Activation::kNone;
  return c;
}

// DenseForwardFcMetal: ((code, message), y); y starts as -7 (tests see what was not written).
py::tuple FcForward(F32 x, F32 w, F32 bias, bool relu, size_t offset, bool stream) {
  const dn::DenseDims d = DimsOf(x, w, bias);
  const dn::DenseConfig c = ConfigOf(relu);
  F32 y = Filled({static_cast<py::ssize_t>(d.rows), static_cast<py::ssize_t>(d.out)}, -7.0f);
  Stage stage{offset, {}};
  dn::DenseForwardArgs a;
  a.x = stage.Add(x, /*optional=*/true);
  a.kernel = stage.Add(w, /*optional=*/true);
  a.bias = stage.Add(bias, /*optional=*/true);
  a.y = stage.Add(y, /*optional=*/true);
  BackendStatus st = NoGil([&] { return OnStream(stream, [&] { return dn::DenseForwardFcMetal(d, c, a); }); });
  if (st.ok()) stage.Commit();
  return py::make_tuple(Result(st), y);
}

// The CPU backend's forward (float32 accumulation, one thread): y [N, M].
F32 CpuForward(F32 x, F32 w, F32 bias, bool relu) {
  const dn::DenseDims d = DimsOf(x, w, bias);
  const dn::DenseConfig c = ConfigOf(relu);
  F32 y = Filled({static_cast<py::ssize_t>(d.rows), static_cast<py::ssize_t>(d.out)}, 0.0f);
  std::vector<float> workspace(static_cast<size_t>(std::max<int64_t>(dn::DenseForwardCpuWorkspace(d, c), 1)));
  dn::CpuContext cpu;
  cpu.parallel = [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    if (total > 0) fn(0, total);
  };
  cpu.workspace = workspace.data();
  cpu.workspace_size = static_cast<int64_t>(workspace.size());
  dn::DenseForwardArgs a{x.data(), w.data(), bias.size() == 0 ? nullptr : bias.data(), y.mutable_data()};
  dn::DenseForwardCpu(d, c, a, cpu);
  return y;
}

dn::CpuContext SerialCpu(std::vector<float>* workspace, int64_t floats) {
  workspace->assign(static_cast<size_t>(std::max<int64_t>(floats, 1)), 0.0f);
  dn::CpuContext cpu;
  cpu.parallel = [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    if (total > 0) fn(0, total);
  };
  cpu.workspace = workspace->data();
  cpu.workspace_size = static_cast<int64_t>(workspace->size());
  return cpu;
}

// dy [N, M], w [K, M]: the dims of a gradient call.
dn::DenseDims GradDimsOf(const F32& dy, const F32& w) {
  if (dy.ndim() != 2 || w.ndim() != 2 || dy.shape(1) != w.shape(1)) {
    throw std::invalid_argument("dense: dy must be [N, M] and w [K, M]");
  }
  dn::DenseDims d;
  d.rows = dy.shape(0);
  d.in = w.shape(0);
  d.out = w.shape(1);
  return d;
}

// DenseBackpropInputFcMetal: ((code, message), dx); dx starts as -7.
py::tuple FcBackpropInput(F32 dy, F32 w, bool relu, size_t offset, bool stream) {
  const dn::DenseDims d = GradDimsOf(dy, w);
  const dn::DenseConfig c = ConfigOf(relu);
  F32 dx = Filled({static_cast<py::ssize_t>(d.rows), static_cast<py::ssize_t>(d.in)}, -7.0f);
  F32 y = Filled({static_cast<py::ssize_t>(d.rows), static_cast<py::ssize_t>(d.out)}, 1.0f);  // relu's mask
  Stage stage{offset, {}};
  dn::DenseBackpropInputArgs a;
  a.dy = stage.Add(dy, /*optional=*/true);
  a.kernel = stage.Add(w, /*optional=*/true);
  a.y = relu ? stage.Add(y, /*optional=*/true) : nullptr;
  a.dx = stage.Add(dx, /*optional=*/true);
  BackendStatus st =
      NoGil([&] { return OnStream(stream, [&] { return dn::DenseBackpropInputFcMetal(d, c, a); }); });
  if (st.ok()) stage.Commit();
  return py::make_tuple(Result(st), dx);
}

// DenseBackpropKernelFcMetal: ((code, message), dw, db); x [N, K], dy [N, M]; db of
// size 0 when bias is false. Outputs start as -7.
py::tuple FcBackpropKernel(F32 x, F32 dy, bool bias, bool relu, size_t offset, bool stream) {
  if (x.ndim() != 2 || dy.ndim() != 2 || x.shape(0) != dy.shape(0)) {
    throw std::invalid_argument("dense: x must be [N, K] and dy [N, M]");
  }
  dn::DenseDims d;
  d.rows = x.shape(0);
  d.in = x.shape(1);
  d.out = dy.shape(1);
  const dn::DenseConfig c = ConfigOf(relu);
  F32 dw = Filled({static_cast<py::ssize_t>(d.in), static_cast<py::ssize_t>(d.out)}, -7.0f);
  F32 db = Filled({bias ? static_cast<py::ssize_t>(d.out) : 0}, -7.0f);
  F32 y = Filled({static_cast<py::ssize_t>(d.rows), static_cast<py::ssize_t>(d.out)}, 1.0f);
  Stage stage{offset, {}};
  dn::DenseBackpropKernelArgs a;
  a.x = stage.Add(x, /*optional=*/true);
  a.dy = stage.Add(dy, /*optional=*/true);
  a.y = relu ? stage.Add(y, /*optional=*/true) : nullptr;
  a.dkernel = stage.Add(dw, /*optional=*/true);
  a.dbias = bias ? stage.Add(db, /*optional=*/true) : nullptr;
  BackendStatus st =
      NoGil([&] { return OnStream(stream, [&] { return dn::DenseBackpropKernelFcMetal(d, c, a); }); });
  if (st.ok()) stage.Commit();
  return py::make_tuple(Result(st), dw, db);
}

// The CPU backend's identity gradients: (dx [N, K], dw [K, M], db [M]).
py::tuple CpuBackprop(F32 x, F32 w, F32 dy) {
  const dn::DenseDims d = GradDimsOf(dy, w);
  if (x.ndim() != 2 || x.shape(0) != d.rows || x.shape(1) != d.in) throw std::invalid_argument("dense: x must be [N, K]");
  const dn::DenseConfig c;
  F32 dx = Filled({static_cast<py::ssize_t>(d.rows), static_cast<py::ssize_t>(d.in)}, 0.0f);
  F32 dw = Filled({static_cast<py::ssize_t>(d.in), static_cast<py::ssize_t>(d.out)}, 0.0f);
  F32 db = Filled({static_cast<py::ssize_t>(d.out)}, 0.0f);
  std::vector<float> workspace;
  dn::CpuContext cpu = SerialCpu(&workspace, dn::DenseBackpropInputCpuWorkspace(d, c));
  dn::DenseBackpropInputArgs ai{dy.data(), w.data(), nullptr, dx.mutable_data()};
  dn::DenseBackpropInputCpu(d, c, ai, cpu);
  cpu = SerialCpu(&workspace, dn::DenseBackpropKernelCpuWorkspace(d, c, /*bias=*/true));
  dn::DenseBackpropKernelArgs ak{x.data(), dy.data(), nullptr, dw.mutable_data(), db.mutable_data()};
  dn::DenseBackpropKernelCpu(d, c, ak, cpu);
  return py::make_tuple(dx, dw, db);
}

// KernelToFcWeights: W [K, M] -> Apple's [M][1][1][K] as [M, K].
F32 FcWeights(F32 w) {
  if (w.ndim() != 2) throw std::invalid_argument("dense: w must be [K, M]");
  F32 out({w.shape(1), w.shape(0)});
  dn::KernelToFcWeights(w.shape(0), w.shape(1), w.data(), out.mutable_data());
  return out;
}

}  // namespace

void BindDense(py::module_& m) {
  m.def("dense_fc_forward", &FcForward, py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("relu") = false,
        py::arg("offset") = 0, py::arg("stream") = false,
        "DenseForwardFcMetal (MPSCNNFullyConnected): ((code, message), y); bias empty: none");
  m.def("dense_forward_cpu", &CpuForward, py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("relu") = false,
        "The dense CPU backend's forward (float32 accumulation, one thread)");
  m.def("dense_fc_backprop_input", &FcBackpropInput, py::arg("dy"), py::arg("w"), py::arg("relu") = false,
        py::arg("offset") = 0, py::arg("stream") = false,
        "DenseBackpropInputFcMetal (MPSCNNFullyConnectedGradient): ((code, message), dx)");
  m.def("dense_fc_backprop_kernel", &FcBackpropKernel, py::arg("x"), py::arg("dy"), py::arg("bias") = true,
        py::arg("relu") = false, py::arg("offset") = 0, py::arg("stream") = false,
        "DenseBackpropKernelFcMetal (MPSCNNFullyConnectedGradient): ((code, message), dw, db)");
  m.def("dense_backprop_cpu", &CpuBackprop, py::arg("x"), py::arg("w"), py::arg("dy"),
        "The dense CPU backend's identity gradients: (dx, dw, db)");
  m.def("dense_fc_weights", &FcWeights, py::arg("w"), "KernelToFcWeights: W [K, M] -> [M, K]");
}

}  // namespace tfmps_test
