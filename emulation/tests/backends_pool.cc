// _tfmps_metal_emu bindings of the pooling (ops/pool/pool_metal.mm) Metal backend: see
// backends_module.cc for the conventions (staged arrays, (code, message) results).
// pool_cpu runs the CPU backend on the same geometry, the reference the tests compare to.
#include <algorithm>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "emulation/tests/backends_common.h"
#include "ops/pool/pool.h"
#include "ops/pool/pool_metal.h"

namespace tfmps_test {
namespace {

const tfmps::ParallelFor kSerial = [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
  if (total > 0) fn(0, total);
};

// x [N, H, W, C], ksize (kh, kw), strides (sh, sw), padding "SAME" or "VALID".
tfmps::pool::Pool2DGeometry GeometryOf(const std::vector<int64_t>& x, std::pair<int64_t, int64_t> ksize,
                                       std::pair<int64_t, int64_t> strides, const std::string& padding) {
  if (x.size() != 4) throw std::invalid_argument("pool: x must be [N, H, W, C]");
  tfmps::pool::Pool2DSpec s;
  s.batch = x[0];
  s.in_h = x[1];
  s.in_w = x[2];
  s.channels = x[3];
  s.k_h = ksize.first;
  s.k_w = ksize.second;
  s.stride_h = strides.first;
  s.stride_w = strides.second;
  if (padding == "SAME") {
    s.padding = tfmps::pool::Padding::kSame;
  } else if (padding == "VALID") {
    s.padding = tfmps::pool::Padding::kValid;
  } else {
    throw std::invalid_argument("pool: padding must be SAME or VALID");
  }
  tfmps::pool::Pool2DGeometry g;
  const std::string why = tfmps::pool::ComputeGeometry(s, &g);
  if (!why.empty()) throw std::invalid_argument("pool: " + why);
  return g;
}

F32 Filled(std::vector<py::ssize_t> shape, float value) {
  F32 a(shape);
  std::fill(a.mutable_data(), a.mutable_data() + a.size(), value);
  return a;
}

std::vector<py::ssize_t> OutShape(const tfmps::pool::Pool2DGeometry& g) {
  return {g.batch, g.out_h, g.out_w, g.channels};
}

// MaxPool2DMetal / AvgPool2DMetal: ((code, message), y); y starts as -7.
py::tuple Forward(F32 x, std::pair<int64_t, int64_t> ksize, std::pair<int64_t, int64_t> strides,
                  const std::string& padding, bool avg, size_t offset, bool stream) {
  const tfmps::pool::Pool2DGeometry g = GeometryOf(ShapeOf(x), ksize, strides, padding);
  F32 y = Filled(OutShape(g), -7.0f);
  Stage stage{offset, {}};
  const float* xp = stage.Add(x, /*optional=*/true);
  float* yp = stage.Add(y, /*optional=*/true);
  BackendStatus st = NoGil([&] {
    return OnStream(stream, [&] {
      return avg ? tfmps::pool::AvgPool2DMetal(g, xp, yp) : tfmps::pool::MaxPool2DMetal(g, xp, yp);
    });
  });
  if (st.ok()) stage.Commit();
  return py::make_tuple(Result(st), y);
}

// MaxPool2DGradMetal (x given) / AvgPool2DGradMetal (x empty: input_sizes from x_shape):
// ((code, message), dx); dx starts as -7.
py::tuple Gradient(F32 x, std::vector<int64_t> x_shape, F32 dy, std::pair<int64_t, int64_t> ksize,
                   std::pair<int64_t, int64_t> strides, const std::string& padding, bool avg, size_t offset,
                   bool stream) {
  const tfmps::pool::Pool2DGeometry g = GeometryOf(avg ? x_shape : ShapeOf(x), ksize, strides, padding);
  if (ShapeOf(dy) != std::vector<int64_t>{g.batch, g.out_h, g.out_w, g.channels}) {
    throw std::invalid_argument("pool_grad: dy must have the pooled output's shape");
  }
  F32 dx = Filled({g.batch, g.in_h, g.in_w, g.channels}, -7.0f);
  Stage stage{offset, {}};
  const float* xp = avg ? nullptr : stage.Add(x, /*optional=*/true);
  const float* dyp = stage.Add(dy, /*optional=*/true);
  float* dxp = stage.Add(dx, /*optional=*/true);
  BackendStatus st = NoGil([&] {
    return OnStream(stream, [&] {
      return avg ? tfmps::pool::AvgPool2DGradMetal(g, dyp, dxp) : tfmps::pool::MaxPool2DGradMetal(g, xp, dyp, dxp);
    });
  });
  if (st.ok()) stage.Commit();
  return py::make_tuple(Result(st), dx);
}

// The CPU backend's gradients: "max_grad" (x, dy), "avg_grad" (x's shape, dy) -> dx.
F32 CpuGrad(const std::string& what, F32 x, F32 dy, std::pair<int64_t, int64_t> ksize,
            std::pair<int64_t, int64_t> strides, const std::string& padding) {
  const tfmps::pool::Pool2DGeometry g = GeometryOf(ShapeOf(x), ksize, strides, padding);
  if (ShapeOf(dy) != std::vector<int64_t>{g.batch, g.out_h, g.out_w, g.channels}) {
    throw std::invalid_argument("pool_cpu_grad: dy must have the pooled output's shape");
  }
  F32 dx = Filled({g.batch, g.in_h, g.in_w, g.channels}, -7.0f);
  if (what == "max_grad") {
    tfmps::pool::MaxPool2DGradCpu(g, x.data(), dy.data(), dx.mutable_data(), kSerial);
  } else if (what == "avg_grad") {
    tfmps::pool::AvgPool2DGradCpu(g, dy.data(), dx.mutable_data(), kSerial);
  } else {
    throw std::invalid_argument("pool_cpu_grad: what must be max_grad or avg_grad");
  }
  return dx;
}

// The CPU backend: "max", "avg" -> y.
F32 Cpu(const std::string& what, F32 x, std::pair<int64_t, int64_t> ksize, std::pair<int64_t, int64_t> strides,
        const std::string& padding) {
  const tfmps::pool::Pool2DGeometry g = GeometryOf(ShapeOf(x), ksize, strides, padding);
  F32 y = Filled(OutShape(g), -7.0f);
  if (what == "max") {
    tfmps::pool::MaxPool2DCpu(g, x.data(), y.mutable_data(), kSerial);
  } else if (what == "avg") {
    tfmps::pool::AvgPool2DCpu(g, x.data(), y.mutable_data(), kSerial);
  } else {
    throw std::invalid_argument("pool_cpu: what must be max or avg");
  }
  return y;
}

}  // namespace

void BindPool(py::module_& m) {
  m.def("pool_forward", &Forward, py::arg("x"), py::arg("ksize"), py::arg("strides"), py::arg("padding"),
        py::arg("avg") = false, py::arg("offset") = 0, py::arg("stream") = false,
        "MaxPool2DMetal / AvgPool2DMetal: ((code, message), y)");
  m.def("pool_cpu", &Cpu, py::arg("what"), py::arg("x"), py::arg("ksize"), py::arg("strides"), py::arg("padding"),
        "the CPU backend of pooling: max or avg forward");
  m.def("pool_grad", &Gradient, py::arg("x"), py::arg("x_shape"), py::arg("dy"), py::arg("ksize"), py::arg("strides"),
        py::arg("padding"), py::arg("avg") = false, py::arg("offset") = 0, py::arg("stream") = false,
        "MaxPool2DGradMetal (x) / AvgPool2DGradMetal (x_shape): ((code, message), dx)");
  m.def("pool_cpu_grad", &CpuGrad, py::arg("what"), py::arg("x"), py::arg("dy"), py::arg("ksize"), py::arg("strides"),
        py::arg("padding"), "the CPU backend's pooling gradients: max_grad or avg_grad");
}

}  // namespace tfmps_test
