// The process-wide Metal context and buffer table (see metal_context.h). Built with ARC.
#import <Metal/Metal.h>
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "ops/common/metal_context.h"

namespace tfmps {
namespace metal {
namespace {

struct Context {
  id<MTLDevice> device;
  id<MTLCommandQueue> queue;
};

// The device MPS can run on. MTLCreateSystemDefaultDevice gives the preferred GPU, but on
// macOS only when the process links CoreGraphics (Apple's documentation of that
// function), which a Python interpreter loading this library need not: then the first
// of MTLCopyAllDevices that MPS supports (what PyTorch's MPS backend does too).
id<MTLDevice> ChooseDevice() {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  if (device != nil && MPSSupportsMTLDevice(device)) return device;
  NSArray<id<MTLDevice>>* all = MTLCopyAllDevices();
  for (NSUInteger i = 0; i < [all count]; ++i) {
    id<MTLDevice> candidate = [all objectAtIndex:i];
    if (MPSSupportsMTLDevice(candidate)) return candidate;
  }
  return nil;
}

// Created on first use (a C++ static: thread-safe initialization), never destroyed, so
// that kernels running during interpreter shutdown still find it.
const Context& GetContext() {
  static const Context* context = [] {
    Context* c = new Context();
    @autoreleasepool {
      c->device = ChooseDevice();
      c->queue = c->device != nil ? [c->device newCommandQueue] : nil;
    }
    return c;
  }();
  return *context;
}

struct Entry {
  size_t length;
  id<MTLBuffer> buffer;  // strong: the table keeps registered buffers alive
};

// Keyed by base address, so the entry that may contain p is the last one with base <= p.
struct Table {
  std::mutex mu;
  std::map<uintptr_t, Entry> entries;
};

Table& GetTable() {
  static Table* table = new Table();
  return *table;
}

}  // namespace

bool Available() { return GetContext().queue != nil; }

id<MTLDevice> Device() { return GetContext().device; }

id<MTLCommandQueue> Queue() { return GetContext().queue; }

void RegisterBuffer(void* base, size_t length, void* mtl_buffer_bridged) {
  Table& t = GetTable();
  std::lock_guard<std::mutex> lock(t.mu);
  t.entries[reinterpret_cast<uintptr_t>(base)] =
      Entry{length, (__bridge id<MTLBuffer>)mtl_buffer_bridged};
}

void UnregisterBuffer(void* base) {
  Table& t = GetTable();
  std::lock_guard<std::mutex> lock(t.mu);
  t.entries.erase(reinterpret_cast<uintptr_t>(base));
}

BufferRef FindBuffer(const void* ptr, size_t bytes) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  Table& t = GetTable();
  std::lock_guard<std::mutex> lock(t.mu);
  auto it = t.entries.upper_bound(p);
  if (it == t.entries.begin()) return {};
  --it;
  const size_t offset = p - it->first;
  // Written so that no sum can overflow.
  if (offset > it->second.length || bytes > it->second.length - offset) return {};
  return BufferRef{(__bridge void*)it->second.buffer, offset};
}

BufferRef FindAlignedBuffer(const void* ptr, size_t bytes) {
  const BufferRef ref = FindBuffer(ptr, bytes);
  return ref.found() && ref.offset % kBufferOffsetAlignment == 0 ? ref : BufferRef{};
}

void* AllocateSharedBuffer(size_t length) {
  // A pool of its own: -contents returns an inner pointer, for which ARC retains and
  // autoreleases the buffer, and the allocator's threads have no pool of their own
  // (found by the emulation's live-object counts: one buffer leaked per allocation).
  @autoreleasepool {
    id<MTLDevice> device = Device();
    if (device == nil) return nullptr;
    // Shared storage: one allocation that the CPU and the GPU both address, which is what
    // lets CPU kernels and the CPU fallback run on the same tensors without copies.
    id<MTLBuffer> buffer = [device newBufferWithLength:length
                                               options:MTLResourceStorageModeShared];
    if (buffer == nil) return nullptr;
    void* base = [buffer contents];
    RegisterBuffer(base, [buffer length], (__bridge void*)buffer);
    return base;
  }
}

void FreeSharedBuffer(void* base) {
  @autoreleasepool {
    UnregisterBuffer(base);
  }
}

namespace {
thread_local EncodeTarget* thread_target = nullptr;

BackendStatus FromTarget(const std::string& op, const std::string& error) {
  return error.empty() ? BackendStatus::Ok() : BackendStatus::Internal(op + ": " + error);
}
}  // namespace

EncodeTarget* ThreadTarget() { return thread_target; }
void SetThreadTarget(EncodeTarget* target) { thread_target = target; }

BackendStatus Submit(const std::string& op, const std::function<void(id<MTLCommandBuffer>)>& encode) {
  if (thread_target == nullptr) return SubmitAndWait(op, encode);
  if (!Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  @autoreleasepool {
    return FromTarget(op, thread_target->Encode(encode));
  }
}

BackendStatus SubmitAndWait(const std::string& op, const std::function<void(id<MTLCommandBuffer>)>& encode) {
  if (thread_target != nullptr && Available()) {
    @autoreleasepool {
      std::string e = thread_target->Encode(encode);
      if (e.empty()) e = thread_target->Wait();
      return FromTarget(op, e);
    }
  }
  if (!Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  @autoreleasepool {
    id<MTLCommandBuffer> cb = [Queue() commandBuffer];
    if (cb == nil) return BackendStatus::Internal(op + ": no Metal command buffer");
    encode(cb);
    [cb commit];
    [cb waitUntilCompleted];
    if ([cb status] == MTLCommandBufferStatusCompleted) return BackendStatus::Ok();
    NSError* error = [cb error];
    const char* what = error != nil ? [[error localizedDescription] UTF8String] : nullptr;
    return BackendStatus::Internal(op + ": Metal command buffer failed: " +
                                   (what != nullptr ? what : "no error reported"));
  }
}

id<MTLComputePipelineState> KernelPipeline(const char* library_name, const char* source, const char* kernel,
                                           std::string* error) {
  static std::mutex mu;
  static auto* libraries = new std::map<std::string, id<MTLLibrary>>();
  static auto* pipelines = new std::map<std::string, id<MTLComputePipelineState>>();
  if (!Available()) {
    *error = "no Metal device";
    return nil;
  }
  std::lock_guard<std::mutex> lock(mu);
  const std::string key = std::string(library_name) + ":" + kernel;
  auto it = pipelines->find(key);
  if (it != pipelines->end()) return it->second;
  @autoreleasepool {
    NSError* e = nil;
    id<MTLLibrary> library = (*libraries)[library_name];
    if (library == nil) {
      MTLCompileOptions* options = [[MTLCompileOptions alloc] init];
      if (@available(macOS 15, *)) {
        options.mathMode = MTLMathModeSafe;
      } else {
        options.fastMathEnabled = NO;
      }
      library = [Device() newLibraryWithSource:[NSString stringWithUTF8String:source] options:options error:&e];
      if (library == nil) {
        *error = std::string("compiling ") + library_name + " failed: " +
                 (e != nil ? [[e localizedDescription] UTF8String] : "no error reported");
        return nil;
      }
      (*libraries)[library_name] = library;
    }
    id<MTLFunction> function = [library newFunctionWithName:[NSString stringWithUTF8String:kernel]];
    if (function == nil) {
      *error = std::string(library_name) + " has no kernel " + kernel;
      return nil;
    }
    id<MTLComputePipelineState> pipeline = [Device() newComputePipelineStateWithFunction:function error:&e];
    if (pipeline == nil) {
      *error = std::string("no pipeline for ") + kernel + ": " +
               (e != nil ? [[e localizedDescription] UTF8String] : "no error reported");
      return nil;
    }
    (*pipelines)[key] = pipeline;
    return pipeline;
  }
}

}  // namespace metal
}  // namespace tfmps
