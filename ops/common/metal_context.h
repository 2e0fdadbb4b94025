// The process-wide Metal context (macOS only; metal_context.mm): one device, one command
// queue, and the table that maps host pointers back to the MTLBuffers holding them.
//
// On Apple silicon every tensor of the tf-mps device lives in a unified-memory MTLBuffer
// (MTLResourceStorageModeShared): the device plugin's allocator creates it, registers
// it here, and hands TensorFlow the buffer's `contents` pointer (or a pointer inside it).
// A Metal backend that receives plain pointers through the backend seam finds their
// buffers with FindBuffer; a pointer that is not in a registered buffer (host memory of
// the CPU device, say) makes the backend return kUnsupported, and the caller runs the
// CPU backend on the same memory.
//
// Plain C++ for C++ callers; the accessors that return Objective-C types are declared
// only when compiled as Objective-C++ (__OBJC__).
#ifndef TFMPS_COMMON_METAL_CONTEXT_H_
#define TFMPS_COMMON_METAL_CONTEXT_H_

#include <cstddef>
#include <string>

#include "ops/common/backend.h"

#ifdef __OBJC__
#include <functional>

#import <Metal/Metal.h>
#endif

namespace tfmps {
namespace metal {

// A registered buffer, as an opaque handle (a bridged, not retained, id<MTLBuffer>),
// and the byte offset of the looked-up pointer inside it.
struct BufferRef {
  void* buffer = nullptr;
  size_t offset = 0;
  bool found() const { return buffer != nullptr; }
};

// True when the system has a Metal device. Creates the context on first use.
bool Available();

// Records that [base, base + length) is the contents of `mtl_buffer_bridged` (a
// `(__bridge void*)` id<MTLBuffer>). The table retains the buffer until
// UnregisterBuffer(base). Registering an already registered base replaces the entry.
void RegisterBuffer(void* base, size_t length, void* mtl_buffer_bridged);
void UnregisterBuffer(void* base);

// The buffer that holds all of [ptr, ptr + bytes), or a BufferRef that is not found().
// The handle stays valid while the buffer is registered: the allocator unregisters a
// buffer only when TensorFlow frees it, which cannot happen while a kernel holds the
// tensor.
BufferRef FindBuffer(const void* ptr, size_t bytes);

// FindBuffer, but also not found() when the offset inside the buffer is not a multiple of
// 16 bytes: Metal wants buffer offsets aligned to the widest type a kernel reads (up to
// 16 bytes), and MPS's vectorized kernels may read float4.
constexpr size_t kBufferOffsetAlignment = 16;
BufferRef FindAlignedBuffer(const void* ptr, size_t bytes);

// For the allocator: a new zero-filled shared-storage buffer of `length` bytes,
// registered; returns its contents, or nullptr (no device, or out of memory).
void* AllocateSharedBuffer(size_t length);
// Unregisters (and so releases) a buffer from AllocateSharedBuffer.
void FreeSharedBuffer(void* base);

// Where the calling thread's Metal work goes. The device kernels (ops/device/) set the
// stream they run on, so that the backends encode into the stream's open command buffer
// and return without waiting; everywhere else each call gets a command buffer of its
// own that is committed and waited for. Defined for Objective-C++ below.
class EncodeTarget;
EncodeTarget* ThreadTarget();
void SetThreadTarget(EncodeTarget* target);  // nullptr: back to one command buffer per call

#ifdef __OBJC__
class EncodeTarget {
 public:
  virtual ~EncodeTarget() = default;
  // Encodes into the target's open command buffer; "" on success, else why not.
  virtual std::string Encode(const std::function<void(id<MTLCommandBuffer>)>& encode) = 0;
  // Commits what was encoded and waits for all of it; "" or the failure.
  virtual std::string Wait() = 0;
};

// nil when !Available(). Every tf-mps GPU command goes through this one queue, so that
// work submitted by different kernels runs in submission order.
id<MTLDevice> Device();
id<MTLCommandQueue> Queue();
inline id<MTLBuffer> BufferOf(const BufferRef& ref) {
  return (__bridge id<MTLBuffer>)ref.buffer;
}

// Encodes work into one new command buffer of Queue(), commits it and waits: when it
// returns, the CPU (and any later kernel) sees the results in unified memory. A failed
// command buffer becomes kInternal with the NSError's description, prefixed by `op`.
//
// With a ThreadTarget, the work goes into the target's command buffer and the target is
// waited for: callers that read results on the CPU right after use this.
BackendStatus SubmitAndWait(const std::string& op, const std::function<void(id<MTLCommandBuffer>)>& encode);

// A compute pipeline for `kernel` of tf-mps's own Metal source `source` (embedded text,
// named `library` in messages), compiled once per library and kept for the process.
// MTLMathModeSafe (fastMathEnabled = NO before macOS 15): the kernels must round as the
// CPU backend does, so the compiler may not contract a*b + c into an fma nor reassociate
// (Apple: Safe "prevents the compiler from making any transformations that could affect
// the results"; fast math is the default). nil and *error on failure.
id<MTLComputePipelineState> KernelPipeline(const char* library, const char* source, const char* kernel,
                                           std::string* error);

// GPU work whose results only later GPU work (or a sync point) reads: with a ThreadTarget
// it is encoded into the target and not waited for (a failure then surfaces as the
// stream's error at its next sync point); without one, SubmitAndWait.
BackendStatus Submit(const std::string& op, const std::function<void(id<MTLCommandBuffer>)>& encode);
#endif

}  // namespace metal
}  // namespace tfmps

#endif  // TFMPS_COMMON_METAL_CONTEXT_H_
