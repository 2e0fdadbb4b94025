// The tf-mps device on Metal (see metal_device.h). Built with ARC.
#import <Metal/Metal.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "ops/common/metal_context.h"
#include "ops/device/metal_device.h"

namespace tfmps {
namespace device {
namespace {

std::string Describe(NSError* e) {
  return e != nil ? [[e localizedDescription] UTF8String] : "no error reported";
}

// What completed command buffers of a stream reported: the first failure sticks, as a
// GPU stream's error does.
struct StreamErrors {
  std::mutex mu;
  std::string first;
  void Note(id<MTLCommandBuffer> cb) {
    if ([cb status] != MTLCommandBufferStatusError) return;
    std::lock_guard<std::mutex> lock(mu);
    if (first.empty()) first = "Metal command buffer failed: " + Describe([cb error]);
  }
  std::string Get() {
    std::lock_guard<std::mutex> lock(mu);
    return first;
  }
};

struct Allocations {
  std::mutex mu;
  std::map<void*, uint64_t> sizes;
  MemoryStats stats{};
};
Allocations& A() {
  static Allocations* a = new Allocations();
  return *a;
}

}  // namespace

struct Stream {
  std::mutex mu;
  id<MTLCommandQueue> queue;
  id<MTLCommandBuffer> open;  // the command buffer work is encoded into, or nil
  id<MTLCommandBuffer> last;  // the last one committed
  std::shared_ptr<StreamErrors> errors = std::make_shared<StreamErrors>();
  // Signalled by AddDependency's other side, waited for by the dependent stream.
  id<MTLSharedEvent> dependency_event;
  uint64_t dependency_value = 0;
  int encodes = 0;  // into `open`, for the kMaxEncodesPerCommit bound
};

struct Event {
  id<MTLSharedEvent> event;
  std::atomic<uint64_t> value{0};  // 0: never recorded
  std::mutex mu;                   // serializes Record of one event from two streams
};

namespace {

// Caller holds s->mu.
id<MTLCommandBuffer> Open(Stream* s) {
  if (s->open == nil) {
    s->open = [s->queue commandBuffer];
    std::shared_ptr<StreamErrors> errors = s->errors;
    [s->open addCompletedHandler:^(id<MTLCommandBuffer> cb) {
      errors->Note(cb);
    }];
  }
  return s->open;
}

// Caller holds s->mu.
void Flush(Stream* s) {
  if (s->open == nil) return;
  [s->open commit];
  s->last = s->open;
  s->open = nil;
  s->encodes = 0;
}

std::string NilQueue() { return "the Metal device gave no command buffer"; }

// All the streams, for SynchronizeAll.
struct Streams {
  std::mutex mu;
  std::vector<Stream*> all;
};
Streams& S() {
  static Streams* s = new Streams();
  return *s;
}

}  // namespace

std::string Probe() {
  return metal::Available() ? "" : "no Metal device that MPS supports";
}

const char* HardwareName() {
  static const std::string* name = [] {
    @autoreleasepool {
      id<MTLDevice> d = metal::Device();
      return new std::string(d != nil ? [[d name] UTF8String] : "none");
    }
  }();
  return name->c_str();
}

uint64_t MemoryLimit() {
  @autoreleasepool {
    id<MTLDevice> d = metal::Device();
    return d != nil ? [d recommendedMaxWorkingSetSize] : 0;
  }
}

void* Allocate(uint64_t bytes) {
  // Zero bytes still gets a distinct buffer: TF compares pointers.
  void* p = metal::AllocateSharedBuffer(bytes == 0 ? 1 : static_cast<size_t>(bytes));
  if (p == nullptr) return nullptr;
  Allocations& a = A();
  std::lock_guard<std::mutex> lock(a.mu);
  a.sizes[p] = bytes;
  ++a.stats.num_allocs;
  a.stats.bytes_in_use += static_cast<int64_t>(bytes);
  a.stats.peak_bytes_in_use = std::max(a.stats.peak_bytes_in_use, a.stats.bytes_in_use);
  a.stats.largest_alloc_size = std::max(a.stats.largest_alloc_size, static_cast<int64_t>(bytes));
  return p;
}

void Deallocate(void* p) {
  if (p == nullptr) return;
  {
    Allocations& a = A();
    std::lock_guard<std::mutex> lock(a.mu);
    auto it = a.sizes.find(p);
    if (it == a.sizes.end()) return;
    a.stats.bytes_in_use -= static_cast<int64_t>(it->second);
    a.sizes.erase(it);
  }
  // TF frees a tensor only once no kernel that uses it is still queued (the BFC
  // allocator above returns whole regions only at shutdown), and the buffer itself is
  // retained by every command buffer that encoded it: unregistering releases the last
  // reference of the table, never memory the GPU still reads.
  metal::FreeSharedBuffer(p);
}

MemoryStats Stats() {
  std::lock_guard<std::mutex> lock(A().mu);
  return A().stats;
}

Stream* NewStream() {
  @autoreleasepool {
    id<MTLDevice> d = metal::Device();
    if (d == nil) return nullptr;
    auto* s = new Stream();
    s->queue = [d newCommandQueue];
    s->dependency_event = [d newSharedEvent];
    if (s->queue == nil || s->dependency_event == nil) {
      delete s;
      return nullptr;
    }
    std::lock_guard<std::mutex> lock(S().mu);
    S().all.push_back(s);
    return s;
  }
}

void DeleteStream(Stream* s) {
  if (s == nullptr) return;
  Synchronize(s);
  {
    std::lock_guard<std::mutex> lock(S().mu);
    auto& all = S().all;
    all.erase(std::remove(all.begin(), all.end(), s), all.end());
  }
  @autoreleasepool {
    delete s;
  }
}

std::string Synchronize(Stream* s) {
  @autoreleasepool {
    id<MTLCommandBuffer> last;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      Flush(s);
      last = s->last;
    }
    // A queue runs its command buffers in order: waiting for the last is waiting for all.
    if (last != nil) [last waitUntilCompleted];
    return s->errors->Get();
  }
}

std::string StreamError(Stream* s) { return s->errors->Get(); }

std::string AddDependency(Stream* dependent, Stream* other) {
  if (dependent == other) return "";
  @autoreleasepool {
    uint64_t value;
    id<MTLSharedEvent> event;
    {
      std::lock_guard<std::mutex> lock(other->mu);
      id<MTLCommandBuffer> cb = Open(other);
      if (cb == nil) return NilQueue();
      value = ++other->dependency_value;
      event = other->dependency_event;
      [cb encodeSignalEvent:event value:value];
      Flush(other);
    }
    std::lock_guard<std::mutex> lock(dependent->mu);
    id<MTLCommandBuffer> cb = Open(dependent);
    if (cb == nil) return NilQueue();
    [cb encodeWaitForEvent:event value:value];
    return "";
  }
}

void HostCallback(Stream* s, std::function<void(const std::string&)> fn) {
  @autoreleasepool {
    std::lock_guard<std::mutex> lock(s->mu);
    id<MTLCommandBuffer> cb = Open(s);
    if (cb == nil) {
      fn(NilQueue());
      return;
    }
    std::shared_ptr<StreamErrors> errors = s->errors;
    auto callback = std::make_shared<std::function<void(const std::string&)>>(std::move(fn));
    // Completed handlers run in the order added, so the stream's error note (added
    // when the buffer was opened) is in place before this one reads it.
    [cb addCompletedHandler:^(id<MTLCommandBuffer>) {
      (*callback)(errors->Get());
    }];
    Flush(s);
  }
}

Event* NewEvent() {
  @autoreleasepool {
    id<MTLDevice> d = metal::Device();
    if (d == nil) return nullptr;
    auto* e = new Event();
    e->event = [d newSharedEvent];
    if (e->event == nil) {
      delete e;
      return nullptr;
    }
    return e;
  }
}

void DeleteEvent(Event* e) {
  @autoreleasepool {
    delete e;
  }
}

std::string Record(Stream* s, Event* e) {
  @autoreleasepool {
    std::lock_guard<std::mutex> elock(e->mu);
    std::lock_guard<std::mutex> lock(s->mu);
    id<MTLCommandBuffer> cb = Open(s);
    if (cb == nil) return NilQueue();
    const uint64_t value = e->value.load() + 1;
    [cb encodeSignalEvent:e->event value:value];
    Flush(s);
    e->value.store(value);
    return "";
  }
}

std::string WaitFor(Stream* s, Event* e) {
  const uint64_t value = e->value.load();
  if (value == 0) return "";  // never recorded: nothing to wait for
  @autoreleasepool {
    std::lock_guard<std::mutex> lock(s->mu);
    id<MTLCommandBuffer> cb = Open(s);
    if (cb == nil) return NilQueue();
    [cb encodeWaitForEvent:e->event value:value];
    return "";
  }
}

EventStatus Status(Event* e) {
  const uint64_t value = e->value.load();
  if (value == 0) return EventStatus::kComplete;
  return [e->event signaledValue] >= value ? EventStatus::kComplete : EventStatus::kPending;
}

std::string BlockHostFor(Event* e) {
  const uint64_t value = e->value.load();
  if (value == 0) return "";
  // waitUntilSignaledValue:timeoutMS: is macOS 12+; a one-minute wait that times out is
  // a hang worth reporting rather than waiting forever.
  for (int i = 0; i < 60; ++i) {
    if ([e->event waitUntilSignaledValue:value timeoutMS:1000]) return "";
  }
  return "timed out after 60 s waiting for a Metal event";
}

std::string SynchronizeBeforeHostWrite(Stream* s) {
  {
    std::lock_guard<std::mutex> lock(S().mu);
    for (Stream* other : S().all) {
      if (other != s) Synchronize(other);  // its errors are its own stream's to report
    }
  }
  return Synchronize(s);
}

std::string SynchronizeAll() {
  // Under the list's lock, so that no stream is deleted while it is waited for.
  std::lock_guard<std::mutex> lock(S().mu);
  std::string error;
  for (Stream* s : S().all) {
    std::string e = Synchronize(s);
    if (error.empty()) error = e;
  }
  return error;
}

namespace {

// A stream as the metal context's EncodeTarget (metal_context.h).
class StreamTarget : public metal::EncodeTarget {
 public:
  explicit StreamTarget(Stream* s) : s_(s) {}
  std::string Encode(const std::function<void(id<MTLCommandBuffer>)>& encode) override {
    std::lock_guard<std::mutex> lock(s_->mu);
    id<MTLCommandBuffer> cb = Open(s_);
    if (cb == nil) return NilQueue();
    encode(cb);
    if (++s_->encodes >= kMaxEncodesPerCommit) Flush(s_);
    return "";
  }
  std::string Wait() override { return Synchronize(s_); }

 private:
  Stream* s_;
};

}  // namespace

ScopedStream::ScopedStream(Stream* s)
    : stream_(s), target_(new StreamTarget(s)), previous_(metal::ThreadTarget()) {
  metal::SetThreadTarget(static_cast<StreamTarget*>(target_));
}

ScopedStream::~ScopedStream() {
  metal::SetThreadTarget(static_cast<metal::EncodeTarget*>(previous_));
  delete static_cast<StreamTarget*>(target_);
}

std::string ScopedStream::Wait() { return Synchronize(stream_); }

}  // namespace device
}  // namespace tfmps
