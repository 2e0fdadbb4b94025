// The registry of emulated kernels (shaders.h).
#include "emulation/shaders/shaders.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>

namespace emu_shaders {
namespace {
struct Registry {
  std::mutex mu;
  std::map<std::string, Kernel> kernels;
};
Registry& R() {
  static Registry* r = new Registry();
  return *r;
}
}  // namespace

bool Register(Kernel kernel) {
  std::lock_guard<std::mutex> lock(R().mu);
  if (!R().kernels.emplace(kernel.name, kernel).second) {
    std::fprintf(stderr, "tf-mps Metal emulation: kernel %s registered twice\n", kernel.name);
    std::abort();
  }
  return true;
}

const Kernel* Find(const std::string& name) {
  std::lock_guard<std::mutex> lock(R().mu);
  auto it = R().kernels.find(name);
  return it == R().kernels.end() ? nullptr : &it->second;
}

}  // namespace emu_shaders
