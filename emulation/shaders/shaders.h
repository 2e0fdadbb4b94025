// tf-mps's Metal kernels compiled as C++ (include/metal_stdlib), registered by name so
// that the fake MTLLibrary / MTLComputePipelineState / compute encoder (metal/metal.mm)
// can run them: the fake "compiles" a library by finding each requested function here.
#ifndef TFMPS_EMULATION_SHADERS_SHADERS_H_
#define TFMPS_EMULATION_SHADERS_SHADERS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace emu_shaders {

// What one buffer index is bound to when the kernel runs: a buffer's bytes from the
// bound offset on, or a copy of setBytes: data.
struct Binding {
  void* data = nullptr;
  size_t length = 0;
};

struct Kernel {
  const char* name;
  // Per buffer parameter (index = position): the bytes it needs at least; a reference
  // to a struct needs sizeof the struct, a pointer at least one element.
  std::vector<size_t> min_bytes;
  // Runs the kernel for one thread position.
  void (*run)(const Binding* bindings, uint32_t tid);
};

// nullptr if no kernel of that name is compiled into the emulation.
const Kernel* Find(const std::string& name);
bool Register(Kernel kernel);

// ------------------------------------------------------------ argument plumbing
template <typename T>
struct Param;
template <typename T>
struct Param<T*> {
  static constexpr size_t kMinBytes = sizeof(T);
  static T* Get(const Binding& b) { return static_cast<T*>(b.data); }
};
template <typename T>
struct Param<T&> {
  static constexpr size_t kMinBytes = sizeof(T);
  static T& Get(const Binding& b) { return *static_cast<T*>(b.data); }
};

template <typename F>
struct Signature;
template <typename... A>
struct Signature<void (*)(A...)> {
  using Args = std::tuple<A...>;
  static constexpr size_t kBuffers = sizeof...(A) - 1;  // the last is the thread position
  static_assert(std::is_integral_v<std::tuple_element_t<sizeof...(A) - 1, Args>>,
                "a kernel's last parameter is its thread position");
};

template <auto F, size_t... I>
void Invoke(const Binding* b, uint32_t tid, std::index_sequence<I...>) {
  using Args = typename Signature<decltype(F)>::Args;
  F(Param<std::tuple_element_t<I, Args>>::Get(b[I])..., tid);
}

template <auto F>
void Run(const Binding* b, uint32_t tid) {
  Invoke<F>(b, tid, std::make_index_sequence<Signature<decltype(F)>::kBuffers>());
}

template <auto F, size_t... I>
std::vector<size_t> MinBytes(std::index_sequence<I...>) {
  using Args = typename Signature<decltype(F)>::Args;
  return {Param<std::tuple_element_t<I, Args>>::kMinBytes...};
}

}  // namespace emu_shaders

// In emulation/shaders/kernels.cc, after including the .metal file: one line per kernel.
#define TFMPS_EMU_KERNEL(fn)                                                               \
  static const bool fn##_registered = ::emu_shaders::Register(::emu_shaders::Kernel{       \
      #fn,                                                                                  \
      ::emu_shaders::MinBytes<&fn>(                                                         \
          std::make_index_sequence<::emu_shaders::Signature<decltype(&fn)>::kBuffers>()),   \
      &::emu_shaders::Run<&fn>})

#endif  // TFMPS_EMULATION_SHADERS_SHADERS_H_
