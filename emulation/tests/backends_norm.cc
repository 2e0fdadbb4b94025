// _tfmps_metal_emu bindings of the batch and instance normalization (ops/norm/norm_metal.mm) Metal backend: see
// backends_module.cc for the conventions (staged arrays, (code, message) results).
#include "emulation/tests/backends_common.h"

namespace tfmps_test {

void BindNorm(py::module_& m) { (void)m; }

}  // namespace tfmps_test
