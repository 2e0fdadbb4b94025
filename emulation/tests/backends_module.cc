// _tfmps_metal_emu: the Python tests' handle on the project's Metal backends
// (ops/optim/optim_metal.mm, ops/convert/convert_metal.mm, ops/conv/conv_metal.mm,
// ops/common/metal_context.mm)
// running on the emulation. Plain C++: the backends' entry points are C++ functions of
// the backend seam (optim.h, convert.h, metal_context.h); only MPSImage handling needs
// Objective-C (backends_images.mm).
//
// Each call copies NumPy arrays into fresh shared-storage MTLBuffers made by the metal
// context (as the device's allocator will), runs the backend, and copies the results
// back: the arrays passed in are updated in place, like variables. An optional byte
// offset places every array that far into its buffer, to exercise the alignment rule.
// Results are (code, message): code 0 ok, 1 unsupported (the caller would run the CPU
// backend), 2 internal error.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "emulation/runtime/objc_emu.h"
#include "emulation/tests/backends_common.h"
#include "emulation/tests/backends_images.h"
#include "ops/common/metal_context.h"
#include "ops/conv/conv.h"
#include "ops/conv/conv_metal.h"
#include "ops/conv/conv_repack.h"
#include "ops/convert/convert.h"
#include "ops/optim/optim.h"

namespace py = pybind11;
using tfmps::BackendStatus;

namespace {

using tfmps_test::F32;
using tfmps_test::NoGil;
using tfmps_test::OnStream;
using tfmps_test::Result;
using tfmps_test::ShapeOf;
using tfmps_test::Stage;
using tfmps_test::Staged;

tfmps::optim::GradientTransform Transform(const py::dict& d) {
  tfmps::optim::GradientTransform g;
  g.rescale = d.contains("rescale") ? d["rescale"].cast<float>() : 1.0f;
  if (d.contains("clip") && !d["clip"].is_none()) {
    auto c = d["clip"].cast<std::pair<float, float>>();
    g.clip = true;
    g.clip_min = c.first;
    g.clip_max = c.second;
  }
  const std::string reg = d.contains("regularization") && !d["regularization"].is_none()
                              ? d["regularization"].cast<std::string>()
                              : "none";
  g.regularization = reg == "l1"   ? tfmps::optim::Regularization::kL1
                     : reg == "l2" ? tfmps::optim::Regularization::kL2
                                   : tfmps::optim::Regularization::kNone;
  g.regularization_scale = d.contains("regularization_scale") ? d["regularization_scale"].cast<float>() : 0.0f;
  return g;
}

tfmps::optim::Semantics SemanticsOf(const std::string& s) {
  if (s == "mps") return tfmps::optim::Semantics::kMps;
  if (s == "keras") return tfmps::optim::Semantics::kKeras;
  throw std::invalid_argument("semantics must be 'keras' or 'mps', got '" + s + "'");
}

void CheckSizes(const std::vector<F32>& a, const std::vector<F32>& b, const char* what) {
  if (a.size() != b.size()) throw std::invalid_argument(std::string(what) + ": list lengths differ");
  for (size_t i = 0; i < a.size(); ++i) {
    if (b[i].size() != 0 && b[i].size() != a[i].size()) {
      throw std::invalid_argument(std::string(what) + "[" + std::to_string(i) + "]: size differs from vars");
    }
  }
}

py::tuple Adam(py::dict p, std::vector<F32> vars, std::vector<F32> ms, std::vector<F32> vs,
               std::vector<F32> vhats, std::vector<F32> grads, size_t offset, std::vector<F32> grad_sqs) {
  CheckSizes(vars, ms, "ms");
  CheckSizes(vars, vs, "vs");
  CheckSizes(vars, grads, "grads");
  tfmps::optim::AdamParams a{};
  a.lr = p["lr"].cast<double>();
  a.beta1 = p["beta1"].cast<double>();
  a.beta2 = p["beta2"].cast<double>();
  a.epsilon = p["epsilon"].cast<double>();
  a.step = p["step"].cast<int64_t>();
  a.amsgrad = !vhats.empty();
  a.grad_sq = false;
  for (const F32& x : grad_sqs) a.grad_sq = a.grad_sq || x.size() != 0;
  a.semantics = SemanticsOf(p["semantics"].cast<std::string>());
  a.gradient = Transform(p);
  if (a.amsgrad) CheckSizes(vars, vhats, "vhats");
  if (!grad_sqs.empty()) CheckSizes(vars, grad_sqs, "grad_sqs");
  Stage stage{offset, {}};
  std::vector<tfmps::optim::AdamSlots<float>> slots;
  for (size_t i = 0; i < vars.size(); ++i) {
    slots.push_back({stage.Add(vars[i]), stage.Add(ms[i]), stage.Add(vs[i]),
                     a.amsgrad ? stage.Add(vhats[i]) : nullptr, stage.Add(grads[i]),
                     grad_sqs.empty() ? nullptr : stage.Add(grad_sqs[i], /*optional=*/true),
                     static_cast<int64_t>(vars[i].size())});
  }
  BackendStatus s = NoGil([&] { return tfmps::optim::AdamMetal(a, slots); });
  if (s.ok()) stage.Commit();
  return Result(s);
}

py::tuple Sgd(py::dict p, std::vector<F32> vars, std::vector<F32> moms, std::vector<F32> grads,
              size_t offset) {
  CheckSizes(vars, grads, "grads");
  tfmps::optim::SgdParams a{};
  a.lr = p["lr"].cast<double>();
  a.momentum = p["momentum"].cast<double>();
  a.use_momentum = !moms.empty();
  a.nesterov = p["nesterov"].cast<bool>();
  a.semantics = SemanticsOf(p["semantics"].cast<std::string>());
  a.gradient = Transform(p);
  if (a.use_momentum) CheckSizes(vars, moms, "momentums");
  Stage stage{offset, {}};
  std::vector<tfmps::optim::SgdSlots<float>> slots;
  for (size_t i = 0; i < vars.size(); ++i) {
    slots.push_back({stage.Add(vars[i]), a.use_momentum ? stage.Add(moms[i]) : nullptr,
                     stage.Add(grads[i]), static_cast<int64_t>(vars[i].size())});
  }
  BackendStatus s = NoGil([&] { return tfmps::optim::SgdMetal(a, slots); });
  if (s.ok()) stage.Commit();
  return Result(s);
}

py::tuple RmsProp(py::dict p, std::vector<F32> vars, std::vector<F32> mss, std::vector<F32> mgs,
                  std::vector<F32> moms, std::vector<F32> grads, size_t offset) {
  CheckSizes(vars, mss, "mss");
  CheckSizes(vars, grads, "grads");
  tfmps::optim::RmsPropParams a{};
  a.lr = p["lr"].cast<double>();
  a.rho = p["rho"].cast<double>();
  a.momentum = p["momentum"].cast<double>();
  a.epsilon = p["epsilon"].cast<double>();
  a.centered = !mgs.empty();
  a.use_momentum = !moms.empty();
  a.grad_sq = false;
  a.semantics = SemanticsOf(p["semantics"].cast<std::string>());
  a.gradient = Transform(p);
  Stage stage{offset, {}};
  std::vector<tfmps::optim::RmsPropSlots<float>> slots;
  for (size_t i = 0; i < vars.size(); ++i) {
    slots.push_back({stage.Add(vars[i]), stage.Add(mss[i]), a.centered ? stage.Add(mgs[i]) : nullptr,
                     a.use_momentum ? stage.Add(moms[i]) : nullptr, stage.Add(grads[i]),
                     nullptr, static_cast<int64_t>(vars[i].size())});
  }
  BackendStatus s = NoGil([&] { return tfmps::optim::RmsPropMetal(a, slots); });
  if (s.ok()) stage.Commit();
  return Result(s);
}

// ------------------------------------------------------------------ converters
tfmps::convert::DType DTypeOf(const py::dtype& d) {
  if (d.is(py::dtype::of<uint8_t>())) return tfmps::convert::DType::kUint8;
  if (d.is(py::dtype::of<float>())) return tfmps::convert::DType::kFloat32;
  if (d.kind() == 'f' && d.itemsize() == 2) return tfmps::convert::DType::kFloat16;
  throw std::invalid_argument("dtype must be uint8, float16 or float32");
}

tfmps::convert::Layout LayoutOf(const std::string& s) {
  using L = tfmps::convert::Layout;
  if (s == "nhwc") return L::kNhwc;
  if (s == "sequence") return L::kSequence;
  if (s == "time_major") return L::kTimeMajor;
  if (s == "matrix_hwc") return L::kMatrixHwc;
  if (s == "matrix_chw") return L::kMatrixChw;
  throw std::invalid_argument("memory layout must be nhwc, sequence, time_major, matrix_hwc or matrix_chw");
}

tfmps::convert::ConvertArgs Args(const tfmps_test::Image& image, const std::string& layout,
                                 tfmps::convert::DType mem_type, bool to_image) {
  tfmps::convert::ConvertArgs a;
  a.geometry = {image.n, image.h, image.w, image.c};
  const auto mem = LayoutOf(layout);
  if (to_image) {
    a.src_layout = mem;
    a.dst_layout = tfmps::convert::Layout::kImage;
    a.src_type = mem_type;
    a.dst_type = image.dtype;
  } else {
    a.src_layout = tfmps::convert::Layout::kImage;
    a.dst_layout = mem;
    a.src_type = image.dtype;
    a.dst_type = mem_type;
  }
  return a;
}

// The memory side of an image call: host memory for read/writeBytes (they run on the
// CPU), a staged MTLBuffer for the GPU copies.
py::tuple ToImage(tfmps_test::Image& image, py::array src, const std::string& layout, bool gpu,
                  size_t offset, py::object scale) {
  src = py::array::ensure(src, py::array::c_style);
  auto a = Args(image, layout, DTypeOf(src.dtype()), /*to_image=*/true);
  std::vector<float> scale_v;
  if (!scale.is_none()) {
    scale_v = scale.cast<std::vector<float>>();
    a.scale = scale_v.data();
  }
  std::unique_ptr<Staged> staged;
  if (gpu) {
    staged = std::make_unique<Staged>(src.data(), static_cast<size_t>(src.nbytes()), offset);
    a.src = staged->data();
  } else {
    a.src = src.data();
  }
  BackendStatus s = NoGil([&] {
    return gpu ? tfmps::convert::MatrixToImageMetal(image.handle, a)
               : tfmps::convert::WriteImageMetal(image.handle, a);
  });
  return Result(s);
}

py::tuple FromImage(tfmps_test::Image& image, py::array dst, const std::string& layout, bool gpu,
                    size_t offset) {
  if (!(dst.flags() & py::array::c_style) || !dst.writeable()) {
    throw std::invalid_argument("dst must be a writeable C-contiguous array");
  }
  auto a = Args(image, layout, DTypeOf(dst.dtype()), /*to_image=*/false);
  std::unique_ptr<Staged> staged;
  if (gpu) {
    staged = std::make_unique<Staged>(dst.data(), static_cast<size_t>(dst.nbytes()), offset);
    a.dst = staged->data();
  } else {
    a.dst = dst.mutable_data();
  }
  BackendStatus s = NoGil([&] {
    return gpu ? tfmps::convert::ImageToMatrixMetal(image.handle, a)
               : tfmps::convert::ReadImageMetal(image.handle, a);
  });
  if (s.ok() && staged) staged->CopyTo(dst.mutable_data());
  return Result(s);
}

// ------------------------------------------------------------------ convolution
// The geometry as the conv glue computes it (conv.h's ComputeGeometry), from NHWC input
// and HWIO filter shapes; a ValueError with ComputeGeometry's message if invalid.
tfmps::conv::Conv2DGeometry ConvGeometry(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                         const std::vector<int64_t>& strides, const std::vector<int64_t>& dilations,
                                         const std::string& padding, const std::vector<int64_t>& pads) {
  if (x.size() != 4 || w.size() != 4 || strides.size() != 2 || dilations.size() != 2) {
    throw std::invalid_argument("conv: x and w must have 4 dimensions, strides and dilations 2");
  }
  tfmps::conv::Conv2DSpec s;
  s.batch = x[0];
  s.in_h = x[1];
  s.in_w = x[2];
  s.in_c = x[3];
  s.k_h = w[0];
  s.k_w = w[1];
  s.filter_in_c = w[2];
  s.out_c = w[3];
  s.stride_h = strides[0];
  s.stride_w = strides[1];
  s.dilation_h = dilations[0];
  s.dilation_w = dilations[1];
  if (padding == "VALID") {
    s.padding = tfmps::conv::Padding::kValid;
  } else if (padding == "SAME") {
    s.padding = tfmps::conv::Padding::kSame;
  } else if (padding == "EXPLICIT") {
    if (pads.size() != 4) throw std::invalid_argument("conv: EXPLICIT needs 4 pads (top, bottom, left, right)");
    s.padding = tfmps::conv::Padding::kExplicit;
    for (int i = 0; i < 4; ++i) s.explicit_pads[i] = pads[i];
  } else {
    throw std::invalid_argument("conv: padding must be VALID, SAME or EXPLICIT");
  }
  tfmps::conv::Conv2DGeometry g{};
  const std::string error = tfmps::conv::ComputeGeometry(s, &g);
  if (!error.empty()) throw std::invalid_argument("conv: " + error);
  return g;
}

py::tuple ConvForward(F32 x, F32 w, F32 bias, bool relu, std::vector<int64_t> strides, std::vector<int64_t> dilations,
                      const std::string& padding, std::vector<int64_t> pads, size_t offset, bool half_accumulation,
                      bool stream) {
  const auto g = ConvGeometry(ShapeOf(x), ShapeOf(w), strides, dilations, padding, pads);
  F32 y(std::vector<py::ssize_t>{g.batch, g.out_h, g.out_w, g.out_c});
  std::fill(y.mutable_data(), y.mutable_data() + y.size(), 0.0f);
  Stage stage{offset, {}};
  tfmps::conv::Conv2DForwardArgs a{};
  a.input = stage.Add(x, /*optional=*/true);
  a.filter = w.data();  // read on the CPU by the data source: host memory is fine
  a.bias = bias.size() == 0 ? nullptr : bias.data();
  a.activation = relu ? tfmps::conv::Activation::kRelu : tfmps::conv::Activation::kNone;
  a.output = stage.Add(y, /*optional=*/true);
  const auto acc = half_accumulation ? tfmps::conv::Accumulator::kFloat16 : tfmps::conv::Accumulator::kFloat32;
  BackendStatus s = NoGil([&] { return OnStream(stream, [&] { return tfmps::conv::Conv2DForwardMetal(g, a, acc); }); });
  if (s.ok()) stage.Commit();
  return py::make_tuple(Result(s), y);
}

py::tuple ConvBackpropInput(std::vector<int64_t> x_shape, F32 w, F32 dy, std::vector<int64_t> strides,
                            std::vector<int64_t> dilations, const std::string& padding, std::vector<int64_t> pads,
                            size_t offset, bool stream) {
  const auto g = ConvGeometry(x_shape, ShapeOf(w), strides, dilations, padding, pads);
  if (ShapeOf(dy) != std::vector<int64_t>{g.batch, g.out_h, g.out_w, g.out_c}) {
    throw std::invalid_argument("conv: dy has the wrong shape");
  }
  F32 dx(std::vector<py::ssize_t>(x_shape.begin(), x_shape.end()));
  std::fill(dx.mutable_data(), dx.mutable_data() + dx.size(), 0.0f);
  Stage stage{offset, {}};
  tfmps::conv::Conv2DBackpropInputArgs a{};
  a.filter = w.data();
  a.out_backprop = stage.Add(dy, /*optional=*/true);
  a.input_backprop = stage.Add(dx, /*optional=*/true);
  BackendStatus s = NoGil([&] { return OnStream(stream, [&] { return tfmps::conv::Conv2DBackpropInputMetal(g, a); }); });
  if (s.ok()) stage.Commit();
  return py::make_tuple(Result(s), dx);
}

py::tuple ConvBackpropFilter(F32 x, std::vector<int64_t> w_shape, F32 dy, bool bias, std::vector<int64_t> strides,
                             std::vector<int64_t> dilations, const std::string& padding, std::vector<int64_t> pads,
                             size_t offset, bool stream) {
  const auto g = ConvGeometry(ShapeOf(x), w_shape, strides, dilations, padding, pads);
  if (ShapeOf(dy) != std::vector<int64_t>{g.batch, g.out_h, g.out_w, g.out_c}) {
    throw std::invalid_argument("conv: dy has the wrong shape");
  }
  F32 dw(std::vector<py::ssize_t>(w_shape.begin(), w_shape.end()));
  F32 db(std::vector<py::ssize_t>{bias ? g.out_c : 0});
  Stage stage{offset, {}};
  tfmps::conv::Conv2DBackpropFilterArgs a{};
  a.input = stage.Add(x, /*optional=*/true);
  a.out_backprop = stage.Add(dy, /*optional=*/true);
  a.filter_backprop = dw.mutable_data();  // written on the CPU (repacked from MPS's layout)
  a.bias_backprop = bias ? db.mutable_data() : nullptr;
  BackendStatus s = NoGil([&] { return OnStream(stream, [&] { return tfmps::conv::Conv2DBackpropFilterMetal(g, a); }); });
  return py::make_tuple(Result(s), dw, db);
}

// Conv2DTransposeMetal: x [N, OH, OW, O] (the convolution's output), w HWIO of the
// convolution from an image of y_shape [N, H, W, C] to x's shape.
py::tuple ConvTranspose(F32 x, F32 w, std::vector<int64_t> y_shape, F32 bias, bool relu, std::vector<int64_t> strides,
                        std::vector<int64_t> dilations, const std::string& padding, std::vector<int64_t> pads,
                        size_t offset, bool half_accumulation, bool stream) {
  const auto g = ConvGeometry(y_shape, ShapeOf(w), strides, dilations, padding, pads);
  if (ShapeOf(x) != std::vector<int64_t>{g.batch, g.out_h, g.out_w, g.out_c}) {
    throw std::invalid_argument("conv: x has the wrong shape for y_shape");
  }
  F32 y(std::vector<py::ssize_t>(y_shape.begin(), y_shape.end()));
  std::fill(y.mutable_data(), y.mutable_data() + y.size(), 0.0f);
  Stage stage{offset, {}};
  tfmps::conv::Conv2DTransposeArgs a{};
  a.input = stage.Add(x, /*optional=*/true);
  a.filter = w.data();
  a.bias = bias.size() == 0 ? nullptr : bias.data();
  a.activation = relu ? tfmps::conv::Activation::kRelu : tfmps::conv::Activation::kNone;
  a.output = stage.Add(y, /*optional=*/true);
  const auto acc = half_accumulation ? tfmps::conv::Accumulator::kFloat16 : tfmps::conv::Accumulator::kFloat32;
  BackendStatus s =
      NoGil([&] { return OnStream(stream, [&] { return tfmps::conv::Conv2DTransposeMetal(g, a, acc); }); });
  if (s.ok()) stage.Commit();
  return py::make_tuple(Result(s), y);
}

// conv_repack.h on a HWIO (to_ohwi) or OHWI array of float32 or float16.
py::array Repack(py::array a, bool to_ohwi) {
  a = py::array::ensure(a, py::array::c_style);
  if (a.ndim() != 4) throw std::invalid_argument("repack: a 4-D array expected");
  tfmps::conv::FilterShape s;
  if (to_ohwi) {  // [KH, KW, Cg, O]
    s.k_h = a.shape(0), s.k_w = a.shape(1), s.in_c_per_group = a.shape(2), s.out_c = a.shape(3);
  } else {  // [O, KH, KW, Cg]
    s.out_c = a.shape(0), s.k_h = a.shape(1), s.k_w = a.shape(2), s.in_c_per_group = a.shape(3);
  }
  std::vector<py::ssize_t> shape = to_ohwi ? std::vector<py::ssize_t>{s.out_c, s.k_h, s.k_w, s.in_c_per_group}
                                           : std::vector<py::ssize_t>{s.k_h, s.k_w, s.in_c_per_group, s.out_c};
  py::array out(a.dtype(), shape);
  if (a.dtype().is(py::dtype::of<float>())) {
    const auto* src = static_cast<const float*>(a.data());
    auto* dst = static_cast<float*>(out.mutable_data());
    to_ohwi ? tfmps::conv::HwioToOhwi(s, src, dst) : tfmps::conv::OhwiToHwio(s, src, dst);
  } else if (a.dtype().kind() == 'f' && a.dtype().itemsize() == 2) {
    const auto* src = static_cast<const uint16_t*>(a.data());
    auto* dst = static_cast<uint16_t*>(out.mutable_data());
    to_ohwi ? tfmps::conv::HwioToOhwi(s, src, dst) : tfmps::conv::OhwiToHwio(s, src, dst);
  } else {
    throw std::invalid_argument("repack: float32 or float16 expected");
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_tfmps_metal_emu, m) {
  m.doc() = "tf-mps's Metal backends on the Linux Metal emulation (tests only)";
  m.def("available", &tfmps::metal::Available, "True when the metal context found a device");
  m.def("live_objects", [] { return objc_emu_live_objects(); },
        "Objective-C objects alive in the emulation's runtime");
  m.def("live_instances", [](const std::string& cls) { return objc_emu_live_instances(cls.c_str()); });
  m.def("fail_next_init", &tfmps_test::FailNextInit, py::arg("class_name"), py::arg("count"),
        "The next `count` initializers of class_name return nil (metal_emu.h)");
  m.def("fail_next_command_buffers", &tfmps_test::FailNextCommandBuffers, py::arg("count"),
        py::arg("message"), "The next `count` committed command buffers end in an error");
  m.def("reset_hooks", &tfmps_test::ResetHooks);
  m.def("debug_level", &tfmps_test::DebugLevel, "TFMPS_METAL_EMU_DEBUG as the emulation read it");
  m.def("adam", &Adam, py::arg("params"), py::arg("vars"), py::arg("ms"), py::arg("vs"),
        py::arg("vhats"), py::arg("grads"), py::arg("offset") = 0,
        py::arg("grad_sqs") = std::vector<F32>());
  m.def("sgd", &Sgd, py::arg("params"), py::arg("vars"), py::arg("momentums"), py::arg("grads"),
        py::arg("offset") = 0);
  m.def("rmsprop", &RmsProp, py::arg("params"), py::arg("vars"), py::arg("mss"), py::arg("mgs"),
        py::arg("moms"), py::arg("grads"), py::arg("offset") = 0);
  py::class_<tfmps_test::Image>(m, "Image")
      .def(py::init([](int64_t n, int64_t h, int64_t w, int64_t c, py::dtype dtype) {
             return tfmps_test::MakeImage(n, h, w, c, DTypeOf(dtype));
           }),
           py::arg("n"), py::arg("h"), py::arg("w"), py::arg("c"), py::arg("dtype"))
      .def_readonly("n", &tfmps_test::Image::n)
      .def_readonly("h", &tfmps_test::Image::h)
      .def_readonly("w", &tfmps_test::Image::w)
      .def_readonly("c", &tfmps_test::Image::c);
  m.def("write_image", [](tfmps_test::Image& i, py::array src, const std::string& layout,
                          py::object scale) { return ToImage(i, src, layout, false, 0, scale); },
        py::arg("image"), py::arg("src"), py::arg("layout"), py::arg("scale") = py::none());
  m.def("read_image", [](tfmps_test::Image& i, py::array dst, const std::string& layout) {
          return FromImage(i, dst, layout, false, 0);
        });
  m.def("matrix_to_image", [](tfmps_test::Image& i, py::array src, const std::string& layout,
                              size_t offset) { return ToImage(i, src, layout, true, offset, py::none()); },
        py::arg("image"), py::arg("src"), py::arg("layout"), py::arg("offset") = 0);
  m.def("image_to_matrix", [](tfmps_test::Image& i, py::array dst, const std::string& layout,
                              size_t offset) { return FromImage(i, dst, layout, true, offset); },
        py::arg("image"), py::arg("dst"), py::arg("layout"), py::arg("offset") = 0);
  m.def("conv2d_forward", &ConvForward, py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("relu"),
        py::arg("strides"), py::arg("dilations"), py::arg("padding"), py::arg("pads") = std::vector<int64_t>(),
        py::arg("offset") = 0, py::arg("half_accumulation") = false, py::arg("stream") = false,
        "Conv2DForwardMetal: ((code, message), y)");
  m.def("conv2d_backprop_input", &ConvBackpropInput, py::arg("x_shape"), py::arg("w"), py::arg("dy"),
        py::arg("strides"), py::arg("dilations"), py::arg("padding"), py::arg("pads") = std::vector<int64_t>(),
        py::arg("offset") = 0, py::arg("stream") = false, "Conv2DBackpropInputMetal: ((code, message), dx)");
  m.def("conv2d_backprop_filter", &ConvBackpropFilter, py::arg("x"), py::arg("w_shape"), py::arg("dy"),
        py::arg("bias"), py::arg("strides"), py::arg("dilations"), py::arg("padding"),
        py::arg("pads") = std::vector<int64_t>(), py::arg("offset") = 0, py::arg("stream") = false,
        "Conv2DBackpropFilterMetal: ((code, message), dw, db)");
  m.def("conv2d_transpose", &ConvTranspose, py::arg("x"), py::arg("w"), py::arg("y_shape"), py::arg("bias"),
        py::arg("relu"), py::arg("strides"), py::arg("dilations"), py::arg("padding"),
        py::arg("pads") = std::vector<int64_t>(), py::arg("offset") = 0, py::arg("half_accumulation") = false,
        py::arg("stream") = false, "Conv2DTransposeMetal: ((code, message), y)");
  m.def("hwio_to_transpose_weights", [](F32 w, int64_t groups) {
    if (w.ndim() != 4 || groups < 1 || w.shape(3) % groups != 0) {
      throw std::invalid_argument("repack: HWIO [KH, KW, Cg, O] with O divisible by groups expected");
    }
    tfmps::conv::FilterShape s;
    s.k_h = w.shape(0), s.k_w = w.shape(1), s.in_c_per_group = w.shape(2), s.out_c = w.shape(3);
    F32 out(std::vector<py::ssize_t>{groups * s.in_c_per_group, s.k_h, s.k_w, s.out_c / groups});
    tfmps::conv::HwioToTransposeWeights(s, groups, w.data(), out.mutable_data());
    return out;
  });
  m.def("hwio_to_ohwi", [](py::array a) { return Repack(a, true); });
  tfmps_test::BindPool(m);
  tfmps_test::BindNorm(m);
  tfmps_test::BindDense(m);
  m.def("ohwi_to_hwio", [](py::array a) { return Repack(a, false); });
}
