// The tf-mps device on Metal (metal_device.mm), as plain C++ for the plugin glue
// (plugin.cc): allocations, streams, events. One implementation for both providers of
// Metal: Apple's frameworks on macOS, the project's emulation on Linux.
//
// Streams: each is an MTLCommandQueue with at most one open command buffer that work
// is encoded into; it is committed at the sync points (a copy to or from the host, an
// event, a host callback, synchronize), so that a stream's work runs in order and the
// host waits only where it must. Memory is shared-storage MTLBuffers registered in the
// metal context's table (metal_context.h), so kernels find the buffer of a tensor.
//
// Kernels (device_kernels.cc, the tf_mps ops' device kernels) encode into the open
// command buffer through a ScopedStream; it is committed after kMaxEncodesPerCommit
// encodes too, so that the GPU starts on a long run of kernels before the next sync
// point. Copies, fills and host callbacks run on the host after the stream's queued work
// completed (unified memory: one wait per such call); copies and fills that write
// device memory wait for every stream's queued work (SynchronizeBeforeHostWrite).
#ifndef TFMPS_DEVICE_METAL_DEVICE_H_
#define TFMPS_DEVICE_METAL_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace tfmps {
namespace device {

// The device type TensorFlow gets: "GPU" on macOS; on Linux (the emulation) "MPS" for
// TFMPS_METAL_EMULATION=1 or mps, "GPU" for gpu, nullptr when unset, 0 or unknown, with
// *why_not saying which (config.cc; plain C++, read once).
const char* ConfiguredDeviceType(std::string* why_not);

// "" if the device can be used, else why not (no Metal device, MPS unsupported).
std::string Probe();
const char* HardwareName();
// Bytes the device should use at most: Apple's recommendedMaxWorkingSetSize.
uint64_t MemoryLimit();

// nullptr when out of memory. Freed memory is released at once (no cache here: TF's
// BFC allocator above keeps its own pool).
void* Allocate(uint64_t bytes);
void Deallocate(void* p);
struct MemoryStats {
  int64_t num_allocs, bytes_in_use, peak_bytes_in_use, largest_alloc_size;
};
MemoryStats Stats();

struct Stream;
Stream* NewStream();
void DeleteStream(Stream* s);
// Commits the open command buffer and waits for everything the stream has queued.
// "" on success, else the failed command buffer's error.
std::string Synchronize(Stream* s);
// The first error of the stream's completed work, "" if none (nothing is waited for).
std::string StreamError(Stream* s);
// The dependent stream's later work runs after the other's work queued so far.
std::string AddDependency(Stream* dependent, Stream* other);
// fn(error) after everything queued before it (error: "" or the failure).
void HostCallback(Stream* s, std::function<void(const std::string&)> fn);

struct Event;
Event* NewEvent();
void DeleteEvent(Event* e);
std::string Record(Stream* s, Event* e);
std::string WaitFor(Stream* s, Event* e);  // on the GPU: the stream waits, not the host
enum class EventStatus { kPending, kComplete, kError };
EventStatus Status(Event* e);
std::string BlockHostFor(Event* e);

// Every stream's work, and all of it completed.
std::string SynchronizeAll();
// Before the host writes device memory on stream s's behalf (a copy from the host, a
// copy inside the device, a fill): every stream's queued work has completed, because
// the destination may be memory TF's allocator just took back from a tensor that
// queued kernels of another stream (the compute stream) still read or write. TF does
// not always order such a copy after the compute stream (a function's constants are
// copied on the host-to-device stream with no wait for it), and a GPU-side copy would
// wait on the GPU, where this one, on the host, must wait here. "" or s's own error.
std::string SynchronizeBeforeHostWrite(Stream* s);

// While one lives, the calling thread's Metal work (metal::Submit in the backends, and
// Encode below) goes into the stream's open command buffer instead of a command buffer
// per call. Nests: the previous target comes back when it dies.
constexpr int kMaxEncodesPerCommit = 64;
class ScopedStream {
 public:
  explicit ScopedStream(Stream* s);
  ~ScopedStream();
  ScopedStream(const ScopedStream&) = delete;
  ScopedStream& operator=(const ScopedStream&) = delete;
  // Commits and waits for everything the stream has queued (before CPU work on the
  // stream's buffers, the CPU fallback of a kernel); "" or the stream's error.
  std::string Wait();
  Stream* stream() const { return stream_; }

 private:
  Stream* stream_;
  void* target_;
  void* previous_;
};

}  // namespace device
}  // namespace tfmps

// TensorFlow's SP_Stream for this device (stream_executor.h declares it incomplete):
// what TF_GetStream hands a device kernel.
struct SP_Stream_st {
  tfmps::device::Stream* stream;
};

namespace tfmps {
namespace device {

}  // namespace device
}  // namespace tfmps

#endif  // TFMPS_DEVICE_METAL_DEVICE_H_
