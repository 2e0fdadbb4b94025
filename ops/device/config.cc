// Which device type the tf-mps device registers as (metal_device.h): plain C++, shared
// by the plugin (plugin.cc) and the device kernels (device_kernels.cc), which must agree.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "ops/device/metal_device.h"

namespace tfmps {
namespace device {
namespace {

struct Choice {
  const char* type = nullptr;
  std::string why_not;
};

Choice Read() {
  Choice c;
#if defined(__APPLE__)
  c.type = "GPU";
#else
  const char* v = std::getenv("TFMPS_METAL_EMULATION");
  const std::string value = v != nullptr ? v : "";
  if (value.empty() || value == "0") {
    c.why_not = "TFMPS_METAL_EMULATION is not set";
  } else if (value == "1" || value == "mps" || value == "MPS") {
    c.type = "MPS";
  } else if (value == "gpu" || value == "GPU") {
    c.type = "GPU";
  } else {
    std::fprintf(stderr, "tf-mps: TFMPS_METAL_EMULATION=%s is not 1, mps or gpu; no tf-mps device\n",
                 value.c_str());
    c.why_not = "TFMPS_METAL_EMULATION has an unknown value";
  }
#endif
  return c;
}

}  // namespace

const char* ConfiguredDeviceType(std::string* why_not) {
  static const Choice* choice = new Choice(Read());
  if (why_not != nullptr) *why_not = choice->why_not;
  return choice->type;
}

}  // namespace device
}  // namespace tfmps
