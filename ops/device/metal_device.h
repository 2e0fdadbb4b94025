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
// First slice of the device (issue 10): copies, fills and host callbacks run on the
// host after the stream's queued work completed (correct, one wait per such call);
// kernels encoding into the open command buffer come with the op kernels.
#ifndef TFMPS_DEVICE_METAL_DEVICE_H_
#define TFMPS_DEVICE_METAL_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace tfmps {
namespace device {

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

}  // namespace device
}  // namespace tfmps

#endif  // TFMPS_DEVICE_METAL_DEVICE_H_
