// _tfmps_metal_emu bindings of the fully connected (ops/dense/dense_metal.mm) Metal backend: see
// backends_module.cc for the conventions (staged arrays, (code, message) results).
#include "emulation/tests/backends_common.h"

namespace tfmps_test {

void BindDense(py::module_& m) { (void)m; }

}  // namespace tfmps_test
