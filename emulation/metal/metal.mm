// A CPU fake of Metal for the Linux emulation: device, buffers, command queues with
// their own worker threads, command buffers, shared events and the blit encoder. The
// model and its debug mode are described in metal_emu.h. Built with ARC.
//
// Where Apple documents a rule (developer.apple.com, MTLCommandBuffer.h, ...), the fake
// follows it and checks it, failing as Metal's API validation layer does (an abort with
// "failed assertion"); the comments cite the rule. Apple does not document every
// message text: the texts here are this emulation's, in the layer's style.
#import <Metal/Metal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "emulation/metal/metal_emu.h"
#include "emulation/shaders/shaders.h"
#include "emulation/runtime/objc_emu.h"

extern "C" NSErrorDomain const MTLCommandBufferErrorDomain = @"MTLCommandBufferErrorDomain";

// ----------------------------------------------------------------- shared helpers
void EmuValidationFailure(const char* method, const std::string& what) {
  std::fprintf(stderr, "tf-mps Metal emulation: %s: failed assertion `%s'\n", method, what.c_str());
  std::fflush(stderr);
  std::abort();
}

int EmuDebugLevel() {
  static const int level = [] {
    const char* v = std::getenv("TFMPS_METAL_EMU_DEBUG");
    return v != nullptr ? std::atoi(v) : 0;
  }();
  return level;
}

void EmuFillUndefined(void* p, size_t bytes) {
  std::memset(p, EmuDebugLevel() >= 1 ? 0xFF : 0, bytes);
}

namespace {

struct Hooks {
  std::mutex mu;
  std::map<std::string, int> fail_init;
  int fail_command_buffers = 0;
  std::string fail_message;
};

Hooks& GetHooks() {
  static Hooks* hooks = new Hooks();
  return *hooks;
}

// Takes one injected command-buffer failure, if any is pending.
bool TakeCommandBufferFailure(std::string* message) {
  Hooks& h = GetHooks();
  std::lock_guard<std::mutex> lock(h.mu);
  if (h.fail_command_buffers <= 0) return false;
  --h.fail_command_buffers;
  *message = h.fail_message;
  return true;
}

// How long the worker waits for an event before it gives up as a GPU watchdog would
// (MTLCommandBufferErrorTimeout) instead of hanging the test forever.
constexpr auto kEventWaitTimeout = std::chrono::seconds(60);

// Apple silicon Macs report a large fraction of memory; any allocation beyond this is
// refused (nil), as newBuffer... refuses lengths above maxBufferLength.
constexpr NSUInteger kMaxBufferLength = NSUInteger{1} << 34;

}  // namespace

void EmuFailNextInit(const char* class_name, int count) {
  Hooks& h = GetHooks();
  std::lock_guard<std::mutex> lock(h.mu);
  if (count <= 0) {
    h.fail_init.erase(class_name);
  } else {
    h.fail_init[class_name] = count;
  }
}

bool EmuInitShouldFail(const char* class_name) {
  Hooks& h = GetHooks();
  std::lock_guard<std::mutex> lock(h.mu);
  auto it = h.fail_init.find(class_name);
  if (it == h.fail_init.end()) return false;
  if (--it->second <= 0) h.fail_init.erase(it);
  return true;
}

void EmuFailNextCommandBuffers(int count, const std::string& message) {
  Hooks& h = GetHooks();
  std::lock_guard<std::mutex> lock(h.mu);
  h.fail_command_buffers = std::max(count, 0);
  h.fail_message = message;
}

void EmuResetHooks() {
  Hooks& h = GetHooks();
  std::lock_guard<std::mutex> lock(h.mu);
  h.fail_init.clear();
  h.fail_command_buffers = 0;
  h.fail_message.clear();
}

// ------------------------------------------------------------------------- device
@interface TFMPSEmuDevice : NSObject <MTLDevice>
@end

@interface TFMPSEmuBuffer : NSObject <MTLBuffer>
- (instancetype)initWithDevice:(id<MTLDevice>)device
                        length:(NSUInteger)length
                       options:(MTLResourceOptions)options
                         bytes:(const void*)bytes
                        method:(const char*)method;
- (void*)storage;
@end

@interface TFMPSEmuCommandQueue : NSObject <MTLCommandQueue>
- (instancetype)initWithDevice:(id<MTLDevice>)device;
@end

@interface TFMPSEmuSharedEvent : NSObject <MTLSharedEvent>
- (instancetype)initWithDevice:(id<MTLDevice>)device;
@end

// Compute: libraries "compile" by finding each function among the kernels compiled into
// the emulation as C++ (emulation/shaders/); the encoder runs a kernel once per thread
// position when the command buffer runs.
@interface TFMPSEmuLibrary : NSObject <MTLLibrary>
- (instancetype)initWithDevice:(id<MTLDevice>)device source:(std::string)source;
@end

// A function and a pipeline both stand for one emulated kernel.
@interface TFMPSEmuKernelObject : NSObject
- (instancetype)initWithKernel:(const emu_shaders::Kernel*)kernel;
- (const emu_shaders::Kernel*)kernel;
@end

@interface TFMPSEmuFunction : TFMPSEmuKernelObject <MTLFunction>
@end

@interface TFMPSEmuComputePipeline : TFMPSEmuKernelObject <MTLComputePipelineState>
@end

@implementation TFMPSEmuDevice

- (NSString*)name {
  return @"tf-mps Metal emulation (CPU)";
}

// The emulation is one address space, like Apple silicon's unified memory.
- (BOOL)hasUnifiedMemory {
  return YES;
}

- (NSUInteger)maxBufferLength {
  return kMaxBufferLength;
}

// A fixed 4 GiB, as a small Apple-silicon Mac might report: the device's memory limit in
// tests is then the same on every machine.
- (uint64_t)recommendedMaxWorkingSetSize {
  return uint64_t{4} << 30;
}

- (id<MTLCommandQueue>)newCommandQueue {
  if (EmuInitShouldFail("MTLCommandQueue")) return nil;
  return [[TFMPSEmuCommandQueue alloc] initWithDevice:self];
}

- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options {
  if (EmuInitShouldFail("MTLBuffer")) return nil;
  return [[TFMPSEmuBuffer alloc] initWithDevice:self
                                         length:length
                                        options:options
                                          bytes:nullptr
                                         method:"-[MTLDevice newBufferWithLength:options:]"];
}

- (id<MTLBuffer>)newBufferWithBytes:(const void*)pointer
                             length:(NSUInteger)length
                            options:(MTLResourceOptions)options {
  const char* method = "-[MTLDevice newBufferWithBytes:length:options:]";
  if (pointer == nullptr) EmuValidationFailure(method, "pointer is NULL");
  // The CPU cannot write private storage, so there is nothing to copy the bytes into.
  if (((options >> 4) & 0xF) == MTLStorageModePrivate) {
    EmuValidationFailure(method, "MTLStorageModePrivate is not allowed when creating a buffer with bytes");
  }
  if (EmuInitShouldFail("MTLBuffer")) return nil;
  return [[TFMPSEmuBuffer alloc] initWithDevice:self length:length options:options bytes:pointer method:method];
}

- (id<MTLSharedEvent>)newSharedEvent {
  if (EmuInitShouldFail("MTLSharedEvent")) return nil;
  return [[TFMPSEmuSharedEvent alloc] initWithDevice:self];
}

// Nothing here compiles MSL: the "compilation" checks that the source is not empty and
// remembers it; newFunctionWithName: then finds the kernel among those compiled into the
// emulation and checks that the source declares it.
- (id<MTLLibrary>)newLibraryWithSource:(NSString*)source
                               options:(MTLCompileOptions*)options
                                 error:(NSError* __autoreleasing*)error {
  const char* method = "-[MTLDevice newLibraryWithSource:options:error:]";
  if (source == nil) EmuValidationFailure(method, "source is nil");
  std::string text = [source UTF8String];
  if (EmuInitShouldFail("MTLLibrary") || text.find("kernel void") == std::string::npos) {
    if (error != nullptr) {
      *error = [NSError errorWithDomain:@"MTLLibraryErrorDomain"
                                   code:3  // MTLLibraryErrorCompileFailure
                               userInfo:@{NSLocalizedDescriptionKey : @"emulated compile failure: no kernel in the source"}];
    }
    return nil;
  }
  (void)options;
  return [[TFMPSEmuLibrary alloc] initWithDevice:self source:std::move(text)];
}

- (id<MTLComputePipelineState>)newComputePipelineStateWithFunction:(id<MTLFunction>)function
                                                             error:(NSError* __autoreleasing*)error {
  const char* method = "-[MTLDevice newComputePipelineStateWithFunction:error:]";
  if (![(id)function isKindOfClass:[TFMPSEmuFunction class]]) {
    EmuValidationFailure(method, "computeFunction is not a function of the emulated device");
  }
  if (EmuInitShouldFail("MTLComputePipelineState")) {
    if (error != nullptr) {
      *error = [NSError errorWithDomain:@"MTLLibraryErrorDomain"
                                   code:1
                               userInfo:@{NSLocalizedDescriptionKey : @"emulated pipeline failure"}];
    }
    return nil;
  }
  return [[TFMPSEmuComputePipeline alloc] initWithKernel:[(TFMPSEmuFunction*)function kernel]];
}

@end

namespace {

// One device object while anything uses it (Apple returns the same device on every
// call); held weakly, so that with no Metal object left alive the live-object count is
// zero, which the tests check.
TFMPSEmuDevice* SystemDevice() {
  static std::mutex mu;
  static __weak TFMPSEmuDevice* device = nil;
  std::lock_guard<std::mutex> lock(mu);
  TFMPSEmuDevice* d = device;
  if (d == nil) {
    d = [[TFMPSEmuDevice alloc] init];
    device = d;
  }
  return d;
}

}  // namespace

// Apple: on macOS a default device needs CoreGraphics linked; the emulation always has
// its one device (unless a test makes creation fail).
extern "C" id<MTLDevice> MTLCreateSystemDefaultDevice(void) {
  if (EmuInitShouldFail("MTLDevice")) return nil;
  return SystemDevice();
}

extern "C" NSArray<id<MTLDevice>>* MTLCopyAllDevices(void) {
  if (EmuInitShouldFail("MTLDevice")) return [NSArray arrayWithObjects:nullptr count:0];
  id<MTLDevice> device = SystemDevice();
  return [NSArray arrayWithObjects:&device count:1];
}

// ------------------------------------------------------------------------- buffer
@implementation TFMPSEmuBuffer {
  id<MTLDevice> _device;
  void* _bytes;
  NSUInteger _length;
  MTLResourceOptions _options;
}
@synthesize label;

- (instancetype)initWithDevice:(id<MTLDevice>)device
                        length:(NSUInteger)length
                       options:(MTLResourceOptions)options
                         bytes:(const void*)bytes
                        method:(const char*)method {
  const NSUInteger storage = (options >> 4) & 0xF;
  const NSUInteger cache = options & 0xF;
  if (storage > MTLStorageModePrivate) {
    EmuValidationFailure(method, "unsupported storage mode " + std::to_string(storage) +
                                     " in options (the emulation has shared, managed and private)");
  }
  if (cache > MTLCPUCacheModeWriteCombined) {
    EmuValidationFailure(method, "invalid CPU cache mode " + std::to_string(cache) + " in options");
  }
  // The emulation treats a zero length as misuse rather than returning nil: Apple
  // documents no zero-length buffer, and code that asks for one has a bug to handle.
  if (length == 0) EmuValidationFailure(method, "length must be greater than 0");
  if (length > kMaxBufferLength) return nil;
  self = [super init];
  if (self == nil) return nil;
  // Page-aligned like Metal's allocations (contents are at least 16-byte aligned).
  if (posix_memalign(&_bytes, 4096, length) != 0) return nil;
  if (bytes != nullptr) {
    std::memcpy(_bytes, bytes, length);
  } else if (EmuDebugLevel() >= 2) {
    // Deliberately unlike Apple ("creates a buffer the method clears with zero values"):
    // debug level 2 finds code that reads buffer memory it never wrote.
    std::memset(_bytes, 0xFF, length);
  } else {
    std::memset(_bytes, 0, length);
  }
  _device = device;
  _length = length;
  _options = options;
  return self;
}

- (void)dealloc {
  std::free(_bytes);
}

- (id<MTLDevice>)device {
  return _device;
}

- (MTLStorageMode)storageMode {
  return static_cast<MTLStorageMode>((_options >> 4) & 0xF);
}

- (MTLCPUCacheMode)cpuCacheMode {
  return static_cast<MTLCPUCacheMode>(_options & 0xF);
}

// Managed buffers share the one copy here (as on Apple silicon); private ones have no
// CPU address.
- (void*)contents {
  return [self storageMode] == MTLStorageModePrivate ? nullptr : _bytes;
}

- (NSUInteger)length {
  return _length;
}

- (void*)storage {
  return _bytes;
}

@end

void* EmuBufferBytes(id<MTLBuffer> buffer) {
  if (![(id)buffer isKindOfClass:[TFMPSEmuBuffer class]]) {
    EmuValidationFailure("EmuBufferBytes", "not a buffer of the emulated device");
  }
  return [(TFMPSEmuBuffer*)buffer storage];
}

void EmuCheckBufferRange(id<MTLBuffer> buffer, size_t offset, size_t bytes, const char* method) {
  if (buffer == nil) EmuValidationFailure(method, "buffer is nil");
  const size_t length = [buffer length];
  if (offset > length || bytes > length - offset) {
    EmuValidationFailure(method, "range [" + std::to_string(offset) + ", " + std::to_string(offset) + " + " +
                                     std::to_string(bytes) + ") is outside the buffer of length " +
                                     std::to_string(length));
  }
}

// ------------------------------------------------------------------- shared event
namespace {
struct EventState {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t value = 0;

  // Apple: "its value is changed only if you provide a larger value than the value
  // currently stored in the event".
  void Signal(uint64_t v) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (v <= value) return;
      value = v;
    }
    cv.notify_all();
  }
  template <typename Duration>
  bool WaitFor(uint64_t v, Duration timeout) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return value >= v; });
  }
};
}  // namespace

@implementation TFMPSEmuSharedEvent {
  id<MTLDevice> _device;
  std::shared_ptr<EventState> _state;
}
@synthesize label;

- (instancetype)initWithDevice:(id<MTLDevice>)device {
  self = [super init];
  if (self == nil) return nil;
  _device = device;
  _state = std::make_shared<EventState>();
  return self;
}

- (id<MTLDevice>)device {
  return _device;
}

- (uint64_t)signaledValue {
  std::lock_guard<std::mutex> lock(_state->mu);
  return _state->value;
}

- (void)setSignaledValue:(uint64_t)signaledValue {
  _state->Signal(signaledValue);
}

- (BOOL)waitUntilSignaledValue:(uint64_t)value timeoutMS:(uint64_t)milliseconds {
  return _state->WaitFor(value, std::chrono::milliseconds(milliseconds));
}

- (std::shared_ptr<EventState>)state {
  return _state;
}

@end

// ------------------------------------------------------- command queue and buffers
namespace {

struct WorkItem {
  std::string what;
  std::function<std::string()> work;
  MTLCommandBufferError code;
  std::function<void()> finally;
};

// A command buffer's state, shared by the Objective-C object, its queue and the
// worker, so that the worker can release the object before it wakes the waiters.
struct CommandBufferState {
  std::mutex mu;
  std::condition_variable cv;
  MTLCommandBufferStatus status = MTLCommandBufferStatusNotEnqueued;
  std::atomic<bool> committed{false};
  std::atomic<bool> abandoned{false};  // enqueued, then destroyed uncommitted
  bool enqueued = false;
  bool scheduled = false;  // scheduled handlers ran
  bool done = false;       // completed handlers ran, references dropped
  bool encoder_open = false;
  std::vector<WorkItem> items;
  std::string injected_error;  // from EmuFailNextCommandBuffers, fixed at commit
  // While committed and not yet run: the command buffer keeps itself alive, as Metal
  // retains a committed command buffer until it completes.
  id self_ref = nil;
  NSError* error = nil;
  std::vector<MTLCommandBufferHandler> scheduled_handlers, completed_handlers;

  ~CommandBufferState() {
    for (WorkItem& item : items) {
      if (item.finally) item.finally();
    }
  }
};

struct QueueState {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<CommandBufferState>> order;  // enqueue order
  bool stop = false;
};

void RunCommandBuffer(const std::shared_ptr<CommandBufferState>& st);

void WorkerLoop(std::shared_ptr<QueueState> q) {
  for (;;) {
    std::shared_ptr<CommandBufferState> st;
    {
      std::unique_lock<std::mutex> lock(q->mu);
      q->cv.wait(lock, [&] {
        return (q->stop && q->order.empty()) ||
               (!q->order.empty() && (q->order.front()->committed || q->order.front()->abandoned));
      });
      if (q->order.empty()) return;  // stopping
      st = q->order.front();
      q->order.pop_front();
    }
    if (!st->abandoned) RunCommandBuffer(st);
  }
}

void CallHandlers(std::vector<MTLCommandBufferHandler>* handlers, id cb) {
  for (MTLCommandBufferHandler h : *handlers) h(cb);
  handlers->clear();  // Metal releases handlers once called (and so what they capture)
}

void RunCommandBuffer(const std::shared_ptr<CommandBufferState>& st) {
  @autoreleasepool {
    id cb;
    std::vector<MTLCommandBufferHandler> scheduled, completed;
    std::vector<WorkItem> items;
    std::string injected;
    {
      std::lock_guard<std::mutex> lock(st->mu);
      cb = st->self_ref;
      st->self_ref = nil;
      items.swap(st->items);
      scheduled.swap(st->scheduled_handlers);
      injected = st->injected_error;
    }
    if (EmuDebugLevel() >= 1) {
      // Another thread's work, or a slow GPU: a read that does not wait for this
      // command buffer sees the old values.
      thread_local std::mt19937 rng{std::random_device{}()};
      std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(200, 3000)(rng)));
    }
    {
      std::lock_guard<std::mutex> lock(st->mu);
      st->status = MTLCommandBufferStatusScheduled;
    }
    CallHandlers(&scheduled, cb);
    {
      std::lock_guard<std::mutex> lock(st->mu);
      st->scheduled = true;
    }
    st->cv.notify_all();

    std::string failure = injected;
    MTLCommandBufferError code = MTLCommandBufferErrorInternal;
    for (WorkItem& item : items) {
      if (failure.empty()) {
        std::string e = item.work();
        if (!e.empty()) {
          failure = item.what + ": " + e;
          code = item.code;
        }
      }
      if (item.finally) item.finally();
      item.finally = nullptr;
    }
    items.clear();  // drops the references the work captured

    NSError* error = nil;
    if (!failure.empty()) {
      NSString* text = [NSString stringWithUTF8String:failure.c_str()];
      error = [NSError errorWithDomain:MTLCommandBufferErrorDomain
                                  code:static_cast<NSInteger>(code)
                              userInfo:@{NSLocalizedDescriptionKey : text}];
    }
    {
      std::lock_guard<std::mutex> lock(st->mu);
      st->error = error;
      st->status = failure.empty() ? MTLCommandBufferStatusCompleted : MTLCommandBufferStatusError;
      completed.swap(st->completed_handlers);
    }
    // Apple calls completed handlers also for a failed command buffer (status Error).
    CallHandlers(&completed, cb);
    cb = nil;  // possibly the last reference: the object may be destroyed here
  }
  // Only now wake waitUntilCompleted: by then nothing of this command buffer's is
  // retained by the worker, so a test's live-object count right after the wait is exact.
  {
    std::lock_guard<std::mutex> lock(st->mu);
    st->done = true;
  }
  st->cv.notify_all();
}

}  // namespace

@interface TFMPSEmuCommandBuffer : NSObject <MTLCommandBuffer>
- (instancetype)initWithQueue:(TFMPSEmuCommandQueue*)queue state:(std::shared_ptr<QueueState>)queueState;
- (std::shared_ptr<CommandBufferState>)state;
@end

// What every encoder shares: its command buffer, endEncoding, and the validation
// layer's checks (no use after endEncoding, no release before it).
@interface TFMPSEmuEncoder : NSObject {
 @protected
  TFMPSEmuCommandBuffer* _cb;
  bool _ended;
}
@property(copy, atomic) NSString* label;
- (instancetype)initWithCommandBuffer:(TFMPSEmuCommandBuffer*)cb;
- (const char*)kind;  // the protocol's name, for messages
- (void)checkOpen:(const char*)method;
- (id<MTLDevice>)device;
- (void)endEncoding;
@end

@interface TFMPSEmuBlitEncoder : TFMPSEmuEncoder <MTLBlitCommandEncoder>
@end

@interface TFMPSEmuComputeEncoder : TFMPSEmuEncoder <MTLComputeCommandEncoder>
@end

@implementation TFMPSEmuCommandQueue {
  id<MTLDevice> _device;
  std::shared_ptr<QueueState> _state;
  std::thread _worker;
}
@synthesize label;

- (instancetype)initWithDevice:(id<MTLDevice>)device {
  self = [super init];
  if (self == nil) return nil;
  _device = device;
  _state = std::make_shared<QueueState>();
  _worker = std::thread(WorkerLoop, _state);
  return self;
}

// Every command buffer keeps its queue alive, so none is pending here. The last one may
// have been released by the worker itself, which then must not join itself.
- (void)dealloc {
  {
    std::lock_guard<std::mutex> lock(_state->mu);
    _state->stop = true;
  }
  _state->cv.notify_all();
  if (_worker.get_id() == std::this_thread::get_id()) {
    _worker.detach();
  } else {
    _worker.join();
  }
}

- (id<MTLDevice>)device {
  return _device;
}

- (id<MTLCommandBuffer>)commandBuffer {
  if (EmuInitShouldFail("MTLCommandBuffer")) return nil;
  return [[TFMPSEmuCommandBuffer alloc] initWithQueue:self state:_state];
}

@end

@implementation TFMPSEmuCommandBuffer {
  TFMPSEmuCommandQueue* _queue;
  std::shared_ptr<QueueState> _queueState;
  std::shared_ptr<CommandBufferState> _state;
}
@synthesize label;

- (instancetype)initWithQueue:(TFMPSEmuCommandQueue*)queue state:(std::shared_ptr<QueueState>)queueState {
  self = [super init];
  if (self == nil) return nil;
  _queue = queue;
  _queueState = std::move(queueState);
  _state = std::make_shared<CommandBufferState>();
  return self;
}

// An enqueued command buffer that is never committed would block its queue forever on
// Apple's GPU; here it is skipped once destroyed, so tests do not hang.
- (void)dealloc {
  if (!_state->committed && _state->enqueued) {
    _state->abandoned = true;
    {
      std::lock_guard<std::mutex> lock(_queueState->mu);
    }
    _queueState->cv.notify_all();
  }
}

- (std::shared_ptr<CommandBufferState>)state {
  return _state;
}

- (id<MTLDevice>)device {
  return [_queue device];
}

- (id<MTLCommandQueue>)commandQueue {
  return _queue;
}

- (void)enqueue {
  {
    std::lock_guard<std::mutex> lock(_state->mu);
    if (_state->enqueued) {
      EmuValidationFailure("-[MTLCommandBuffer enqueue]", "enqueue an already enqueued command buffer");
    }
    _state->enqueued = true;
    _state->status = MTLCommandBufferStatusEnqueued;
  }
  std::lock_guard<std::mutex> lock(_queueState->mu);
  _queueState->order.push_back(_state);
}

// Apple: "You can commit a command buffer to its command queue only one time"; "only
// ... when it doesn't have an active encoder"; commit enqueues if needed.
- (void)commit {
  bool enqueued;
  {
    std::lock_guard<std::mutex> lock(_state->mu);
    if (_state->committed) {
      EmuValidationFailure("-[MTLCommandBuffer commit]", "commit an already committed command buffer");
    }
    if (_state->encoder_open) {
      EmuValidationFailure("-[MTLCommandBuffer commit]", "commit command buffer with uncommitted encoder");
    }
    enqueued = _state->enqueued;
  }
  if (!enqueued) [self enqueue];
  std::string injected;
  const bool inject = TakeCommandBufferFailure(&injected);
  {
    std::lock_guard<std::mutex> lock(_state->mu);
    if (inject) _state->injected_error = injected.empty() ? "injected GPU failure" : injected;
    _state->self_ref = self;
    _state->status = MTLCommandBufferStatusCommitted;
    _state->committed = true;
  }
  {
    std::lock_guard<std::mutex> lock(_queueState->mu);
  }
  _queueState->cv.notify_all();
}

// Apple: "You can only call this method before calling the command buffer's commit()".
- (void)addScheduledHandler:(MTLCommandBufferHandler)block {
  std::lock_guard<std::mutex> lock(_state->mu);
  if (_state->committed) {
    EmuValidationFailure("-[MTLCommandBuffer addScheduledHandler:]", "Scheduled handler provided after commit call");
  }
  if (block == nil) EmuValidationFailure("-[MTLCommandBuffer addScheduledHandler:]", "block is nil");
  _state->scheduled_handlers.push_back([block copy]);
}

- (void)addCompletedHandler:(MTLCommandBufferHandler)block {
  std::lock_guard<std::mutex> lock(_state->mu);
  if (_state->committed) {
    EmuValidationFailure("-[MTLCommandBuffer addCompletedHandler:]", "Completed handler provided after commit call");
  }
  if (block == nil) EmuValidationFailure("-[MTLCommandBuffer addCompletedHandler:]", "block is nil");
  _state->completed_handlers.push_back([block copy]);
}

- (void)waitUntilScheduled {
  std::unique_lock<std::mutex> lock(_state->mu);
  if (!_state->committed) {
    EmuValidationFailure("-[MTLCommandBuffer waitUntilScheduled]", "waitUntilScheduled on uncommitted command buffer");
  }
  _state->cv.wait(lock, [&] { return _state->scheduled || _state->done; });
}

// Returns after the work ran and the completed handlers returned (Apple does not
// document the order of the two; code must not rely on handlers having run).
- (void)waitUntilCompleted {
  std::unique_lock<std::mutex> lock(_state->mu);
  if (!_state->committed) {
    EmuValidationFailure("-[MTLCommandBuffer waitUntilCompleted]", "waitUntilCompleted on uncommitted command buffer");
  }
  _state->cv.wait(lock, [&] { return _state->done; });
}

- (MTLCommandBufferStatus)status {
  std::lock_guard<std::mutex> lock(_state->mu);
  return _state->status;
}

- (NSError*)error {
  std::lock_guard<std::mutex> lock(_state->mu);
  return _state->error;
}

- (void)checkEncodable:(const char*)method {
  if (_state->committed) {
    EmuValidationFailure(method, "encoding commands into a command buffer that is already committed");
  }
  if (_state->encoder_open) {
    EmuValidationFailure(method, "a command encoder is already encoding to this command buffer "
                                 "(call endEncoding on it first)");
  }
}

- (id<MTLBlitCommandEncoder>)blitCommandEncoder {
  {
    std::lock_guard<std::mutex> lock(_state->mu);
    [self checkEncodable:"-[MTLCommandBuffer blitCommandEncoder]"];
    _state->encoder_open = true;
  }
  return [[TFMPSEmuBlitEncoder alloc] initWithCommandBuffer:self];
}

- (id<MTLComputeCommandEncoder>)computeCommandEncoder {
  {
    std::lock_guard<std::mutex> lock(_state->mu);
    [self checkEncodable:"-[MTLCommandBuffer computeCommandEncoder]"];
    _state->encoder_open = true;
  }
  return [[TFMPSEmuComputeEncoder alloc] initWithCommandBuffer:self];
}

- (void)appendItem:(WorkItem)item fromEncoder:(BOOL)fromEncoder method:(const char*)method {
  std::lock_guard<std::mutex> lock(_state->mu);
  if (fromEncoder) {
    if (_state->committed) EmuValidationFailure(method, "encoding into a committed command buffer");
  } else {
    [self checkEncodable:method];
  }
  _state->items.push_back(std::move(item));
}

- (void)endEncoderFrom:(const char*)method {
  std::lock_guard<std::mutex> lock(_state->mu);
  _state->encoder_open = false;
}

- (void)encodeSignalEvent:(id<MTLEvent>)event value:(uint64_t)value {
  const char* method = "-[MTLCommandBuffer encodeSignalEvent:value:]";
  if (![(id)event isKindOfClass:[TFMPSEmuSharedEvent class]]) {
    EmuValidationFailure(method, "event is not an event of the emulated device");
  }
  std::shared_ptr<EventState> ev = [(TFMPSEmuSharedEvent*)event state];
  id keep = event;  // Metal retains what a command buffer references
  [self appendItem:WorkItem{method,
                            [ev, value, keep] {
                              (void)keep;
                              ev->Signal(value);
                              return std::string();
                            },
                            MTLCommandBufferErrorInternal, nullptr}
       fromEncoder:NO
            method:method];
}

// The queue's worker (its "GPU") stops here until the value is reached, so everything
// encoded after the wait runs after the signal, and later command buffers of the queue
// wait too, as on the GPU.
- (void)encodeWaitForEvent:(id<MTLEvent>)event value:(uint64_t)value {
  const char* method = "-[MTLCommandBuffer encodeWaitForEvent:value:]";
  if (![(id)event isKindOfClass:[TFMPSEmuSharedEvent class]]) {
    EmuValidationFailure(method, "event is not an event of the emulated device");
  }
  std::shared_ptr<EventState> ev = [(TFMPSEmuSharedEvent*)event state];
  id keep = event;
  [self appendItem:WorkItem{method,
                            [ev, value, keep]() -> std::string {
                              (void)keep;
                              if (ev->WaitFor(value, kEventWaitTimeout)) return std::string();
                              return "timed out waiting for event value " + std::to_string(value);
                            },
                            MTLCommandBufferErrorTimeout, nullptr}
       fromEncoder:NO
            method:method];
}

@end

void EmuEncodeFallible(id<MTLCommandBuffer> cb, const char* what, std::function<std::string()> work,
                       MTLCommandBufferError code, std::function<void()> finally) {
  if (![(id)cb isKindOfClass:[TFMPSEmuCommandBuffer class]]) {
    EmuValidationFailure(what, cb == nil ? "commandBuffer is nil" : "not a command buffer of the emulated device");
  }
  [(TFMPSEmuCommandBuffer*)cb appendItem:WorkItem{what, std::move(work), code, std::move(finally)}
                             fromEncoder:NO
                                  method:what];
}

void EmuEncode(id<MTLCommandBuffer> cb, const char* what, std::function<void()> work,
               std::function<void()> finally) {
  EmuEncodeFallible(
      cb, what,
      [work = std::move(work)] {
        work();
        return std::string();
      },
      MTLCommandBufferErrorInternal, std::move(finally));
}

// ------------------------------------------------------------------- encoders
@implementation TFMPSEmuEncoder
@synthesize label;

- (instancetype)initWithCommandBuffer:(TFMPSEmuCommandBuffer*)cb {
  self = [super init];
  if (self == nil) return nil;
  _cb = cb;
  return self;
}

- (const char*)kind {
  return "MTLCommandEncoder";
}

// The validation layer's check: every encoder must be ended before it goes away.
- (void)dealloc {
  if (!_ended) {
    EmuValidationFailure((std::string("-[") + [self kind] + " dealloc]").c_str(),
                         "Command encoder released without endEncoding");
  }
}

- (id<MTLDevice>)device {
  return [_cb device];
}

- (void)checkOpen:(const char*)method {
  if (_ended) EmuValidationFailure(method, "encoder has already ended (endEncoding was called)");
}

- (void)endEncoding {
  const std::string method = std::string("-[") + [self kind] + " endEncoding]";
  [self checkOpen:method.c_str()];
  _ended = true;
  [_cb endEncoderFrom:method.c_str()];
}
@end

// ------------------------------------------------------------------- blit encoder
@implementation TFMPSEmuBlitEncoder

- (const char*)kind {
  return "MTLBlitCommandEncoder";
}

// Apple: "In macOS, sourceOffset [destinationOffset, size] needs to be a multiple of 4";
// overlapping ranges of one buffer are undefined, so refused.
- (void)copyFromBuffer:(id<MTLBuffer>)sourceBuffer
          sourceOffset:(NSUInteger)sourceOffset
              toBuffer:(id<MTLBuffer>)destinationBuffer
     destinationOffset:(NSUInteger)destinationOffset
                  size:(NSUInteger)size {
  const char* method = "-[MTLBlitCommandEncoder copyFromBuffer:sourceOffset:toBuffer:destinationOffset:size:]";
  [self checkOpen:method];
  if (sourceOffset % 4 != 0 || destinationOffset % 4 != 0 || size % 4 != 0) {
    EmuValidationFailure(method, "sourceOffset (" + std::to_string(sourceOffset) + "), destinationOffset (" +
                                     std::to_string(destinationOffset) + ") and size (" + std::to_string(size) +
                                     ") must be multiples of 4 on macOS");
  }
  EmuCheckBufferRange(sourceBuffer, sourceOffset, size, method);
  EmuCheckBufferRange(destinationBuffer, destinationOffset, size, method);
  if (sourceBuffer == destinationBuffer && sourceOffset < destinationOffset + size &&
      destinationOffset < sourceOffset + size) {
    EmuValidationFailure(method, "source and destination ranges overlap in the same buffer");
  }
  id<MTLBuffer> src = sourceBuffer, dst = destinationBuffer;
  [_cb appendItem:WorkItem{method,
                           [src, dst, sourceOffset, destinationOffset, size] {
                             std::memcpy(static_cast<char*>(EmuBufferBytes(dst)) + destinationOffset,
                                         static_cast<const char*>(EmuBufferBytes(src)) + sourceOffset, size);
                             return std::string();
                           },
                           MTLCommandBufferErrorInternal, nullptr}
      fromEncoder:YES
           method:method];
}

// Apple: the range's length must be greater than 0, and location and length multiples
// of 4 in macOS.
- (void)fillBuffer:(id<MTLBuffer>)buffer range:(NSRange)range value:(uint8_t)value {
  const char* method = "-[MTLBlitCommandEncoder fillBuffer:range:value:]";
  [self checkOpen:method];
  if (range.length == 0) EmuValidationFailure(method, "range.length must be greater than 0");
  if (range.location % 4 != 0 || range.length % 4 != 0) {
    EmuValidationFailure(method, "range.location (" + std::to_string(range.location) + ") and range.length (" +
                                     std::to_string(range.length) + ") must be multiples of 4 on macOS");
  }
  EmuCheckBufferRange(buffer, range.location, range.length, method);
  id<MTLBuffer> dst = buffer;
  [_cb appendItem:WorkItem{method,
                           [dst, range, value] {
                             std::memset(static_cast<char*>(EmuBufferBytes(dst)) + range.location, value,
                                         range.length);
                             return std::string();
                           },
                           MTLCommandBufferErrorInternal, nullptr}
      fromEncoder:YES
           method:method];
}

@end

// ------------------------------------------------------------------------ compute
@implementation MTLCompileOptions
@synthesize fastMathEnabled;
@synthesize mathMode;

- (instancetype)init {
  self = [super init];
  if (self == nil) return nil;
  // Apple's defaults: fast math on.
  fastMathEnabled = YES;
  mathMode = MTLMathModeFast;
  return self;
}

- (id)copyWithZone:(NSZone*)zone {
  MTLCompileOptions* c = [[MTLCompileOptions alloc] init];
  c.fastMathEnabled = fastMathEnabled;
  c.mathMode = mathMode;
  return c;
}
@end

@implementation TFMPSEmuLibrary {
  id<MTLDevice> _device;
  std::string _source;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device source:(std::string)source {
  self = [super init];
  if (self == nil) return nil;
  _device = device;
  _source = std::move(source);
  return self;
}

// nil, as Apple documents, when the library has no such function: here, when the source
// does not declare `kernel void name(` or the emulation has no C++ build of it.
- (id<MTLFunction>)newFunctionWithName:(NSString*)name {
  const std::string n = [name UTF8String];
  const emu_shaders::Kernel* kernel = emu_shaders::Find(n);
  if (kernel == nullptr || _source.find("kernel void " + n + "(") == std::string::npos) return nil;
  return [[TFMPSEmuFunction alloc] initWithKernel:kernel];
}
@end

@implementation TFMPSEmuKernelObject {
  const emu_shaders::Kernel* _kernel;
}
- (instancetype)initWithKernel:(const emu_shaders::Kernel*)kernel {
  self = [super init];
  if (self == nil) return nil;
  _kernel = kernel;
  return self;
}
- (const emu_shaders::Kernel*)kernel {
  return _kernel;
}
@end

@implementation TFMPSEmuFunction
- (NSString*)name {
  return [NSString stringWithUTF8String:[self kernel]->name];
}
@end

@implementation TFMPSEmuComputePipeline
// What Apple-silicon GPUs report for simple kernels.
- (NSUInteger)maxTotalThreadsPerThreadgroup {
  return 1024;
}
- (NSUInteger)threadExecutionWidth {
  return 32;
}
@end

namespace {
// Metal's limits: 31 buffer arguments; setBytes: up to 4 KB.
constexpr NSUInteger kMaxBufferArguments = 31;
constexpr NSUInteger kMaxSetBytes = 4096;

struct ComputeBinding {
  id<MTLBuffer> buffer = nil;
  NSUInteger offset = 0;
  std::vector<unsigned char> bytes;
  bool set = false;
};
}  // namespace

@implementation TFMPSEmuComputeEncoder {
  TFMPSEmuComputePipeline* _pipeline;
  ComputeBinding _bindings[kMaxBufferArguments];
}

- (const char*)kind {
  return "MTLComputeCommandEncoder";
}

- (void)setComputePipelineState:(id<MTLComputePipelineState>)state {
  const char* method = "-[MTLComputeCommandEncoder setComputePipelineState:]";
  [self checkOpen:method];
  if (![(id)state isKindOfClass:[TFMPSEmuComputePipeline class]]) {
    EmuValidationFailure(method, "state is not a pipeline of the emulated device");
  }
  _pipeline = (TFMPSEmuComputePipeline*)state;
}

- (void)setBytes:(const void*)bytes length:(NSUInteger)length atIndex:(NSUInteger)index {
  const char* method = "-[MTLComputeCommandEncoder setBytes:length:atIndex:]";
  [self checkOpen:method];
  if (index >= kMaxBufferArguments) EmuValidationFailure(method, "index " + std::to_string(index) + " >= 31");
  if (length == 0 || length > kMaxSetBytes) {
    EmuValidationFailure(method, "length " + std::to_string(length) + " must be in 1..4096 (use a buffer above 4 KB)");
  }
  ComputeBinding& b = _bindings[index];
  b.buffer = nil;
  b.offset = 0;
  b.bytes.assign(static_cast<const unsigned char*>(bytes), static_cast<const unsigned char*>(bytes) + length);
  b.set = true;
}

// Apple: the offset must be a multiple of 4 for device buffers (and of the bound type's
// alignment); a nil buffer unbinds.
- (void)setBuffer:(id<MTLBuffer>)buffer offset:(NSUInteger)offset atIndex:(NSUInteger)index {
  const char* method = "-[MTLComputeCommandEncoder setBuffer:offset:atIndex:]";
  [self checkOpen:method];
  if (index >= kMaxBufferArguments) EmuValidationFailure(method, "index " + std::to_string(index) + " >= 31");
  ComputeBinding& b = _bindings[index];
  b.bytes.clear();
  if (buffer == nil) {
    b = ComputeBinding();
    return;
  }
  if (offset % 4 != 0) EmuValidationFailure(method, "offset " + std::to_string(offset) + " is not a multiple of 4");
  EmuCheckBufferRange(buffer, offset, 0, method);
  b.buffer = buffer;
  b.offset = offset;
  b.set = true;
}

- (void)dispatchThreads:(MTLSize)grid threadsPerThreadgroup:(MTLSize)group {
  [self dispatch:grid group:group method:"-[MTLComputeCommandEncoder dispatchThreads:threadsPerThreadgroup:]"];
}

- (void)dispatchThreadgroups:(MTLSize)groups threadsPerThreadgroup:(MTLSize)group {
  const MTLSize grid = MTLSizeMake(groups.width * group.width, groups.height * group.height,
                                   groups.depth * group.depth);
  [self dispatch:grid group:group method:"-[MTLComputeCommandEncoder dispatchThreadgroups:threadsPerThreadgroup:]"];
}

- (void)dispatch:(MTLSize)grid group:(MTLSize)group method:(const char*)method {
  [self checkOpen:method];
  if (_pipeline == nil) EmuValidationFailure(method, "no compute pipeline state is set");
  const NSUInteger per_group = group.width * group.height * group.depth;
  if (per_group == 0 || per_group > [_pipeline maxTotalThreadsPerThreadgroup]) {
    EmuValidationFailure(method, "threadsPerThreadgroup (" + std::to_string(per_group) +
                                     " threads) must be in 1..maxTotalThreadsPerThreadgroup (1024)");
  }
  if (grid.height != 1 || grid.depth != 1) {
    EmuValidationFailure(method, "the emulation runs one-dimensional grids only (tf-mps's kernels use one)");
  }
  const emu_shaders::Kernel* kernel = [_pipeline kernel];
  // Every buffer argument bound and large enough for what the kernel reads through it.
  struct Snapshot {
    id<MTLBuffer> buffer;
    NSUInteger offset;
    std::vector<unsigned char> bytes;
  };
  std::vector<Snapshot> snap;
  for (size_t i = 0; i < kernel->min_bytes.size(); ++i) {
    const ComputeBinding& b = _bindings[i];
    if (!b.set) {
      EmuValidationFailure(method, std::string(kernel->name) + ": buffer argument " + std::to_string(i) + " is not bound");
    }
    const size_t have = b.buffer != nil ? [b.buffer length] - b.offset : b.bytes.size();
    if (have < kernel->min_bytes[i]) {
      EmuValidationFailure(method, std::string(kernel->name) + ": buffer argument " + std::to_string(i) + " holds " +
                                       std::to_string(have) + " bytes, the kernel reads at least " +
                                       std::to_string(kernel->min_bytes[i]));
    }
    snap.push_back(Snapshot{b.buffer, b.offset, b.bytes});
  }
  const uint64_t threads = grid.width;
  if (threads > UINT32_MAX) EmuValidationFailure(method, "more than 2^32 threads");
  [_cb appendItem:WorkItem{kernel->name,
                           [kernel, snap, threads]() mutable {
                             std::vector<emu_shaders::Binding> bind(snap.size());
                             for (size_t i = 0; i < snap.size(); ++i) {
                               if (snap[i].buffer != nil) {
                                 bind[i].data = static_cast<char*>(EmuBufferBytes(snap[i].buffer)) + snap[i].offset;
                                 bind[i].length = [snap[i].buffer length] - snap[i].offset;
                               } else {
                                 bind[i].data = snap[i].bytes.data();
                                 bind[i].length = snap[i].bytes.size();
                               }
                             }
                             for (uint64_t t = 0; t < threads; ++t) kernel->run(bind.data(), static_cast<uint32_t>(t));
                             return std::string();
                           },
                           MTLCommandBufferErrorInternal, nullptr}
      fromEncoder:YES
           method:method];
}
@end
