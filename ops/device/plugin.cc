// The tf-mps PluggableDevice: TensorFlow's StreamExecutor C API (SE API 0.0.1) over the
// Metal device of metal_device.h. Plain C++; everything Metal is in metal_device.mm.
//
// Which device TensorFlow sees:
//  * macOS: platform METAL, device type GPU, so code that looks for a GPU finds it.
//  * Linux: the same code on the project's Metal emulation, only when asked for with
//    TFMPS_METAL_EMULATION=1 (device type MPS) or =gpu (device type GPU, to test
//    GPU-seeking code paths); otherwise the plugin reports no device and TensorFlow is
//    untouched.
// TensorFlow aborts the process on a missing required field or an error returned from
// SE_InitPlugin, so every field is set and the plugin declines by reporting 0 devices:
// also in a TensorFlow of another minor version than the one it was built for
// (TFMPS_TF_VERSION, from the build), with one line on stderr saying so.
//
// Test-only: TFMPS_TEST_PRETEND_TF_VERSION=X.Y.Z makes that check (and nothing else)
// take X.Y.Z for the running TensorFlow's version, so that tests/test_device.py can see
// the plugin decline without a second TensorFlow.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>
#include <string>

#include "ops/device/metal_device.h"
#include "tensorflow/c/experimental/grappler/grappler.h"
#include "tensorflow/c/experimental/stream_executor/stream_executor.h"
#include "tensorflow/c/tf_buffer.h"
#include "tensorflow/c/tf_status.h"

#ifndef TFMPS_TF_VERSION
#error "build with -DTFMPS_TF_VERSION=\"<the TensorFlow version built against>\""
#endif

namespace {

using tfmps::device::EventStatus;

// The running TensorFlow's version: TF_Version() of its C API (tensorflow/c/c_api.h).
// libtensorflow_cc exports it, not libtensorflow_framework (the only one the plugin
// links), so it is looked up in the process, where TensorFlow has loaded both: in the
// global scope, else in the already loaded libtensorflow_cc (RTLD_NOLOAD: never loads
// it). "" if it cannot be found.
std::string RunningTfVersion() {
  const char* pretend = std::getenv("TFMPS_TEST_PRETEND_TF_VERSION");
  if (pretend != nullptr && pretend[0] != '\0') return pretend;
  using VersionFn = const char* (*)();
  auto call = [](void* sym) -> std::string {
    const char* v = sym != nullptr ? reinterpret_cast<VersionFn>(sym)() : nullptr;
    return v != nullptr ? v : "";
  };
  std::string version = call(dlsym(RTLD_DEFAULT, "TF_Version"));
  if (version.empty()) {
#if defined(__APPLE__)
    const char* cc = "@rpath/libtensorflow_cc.2.dylib";
#else
    const char* cc = "libtensorflow_cc.so.2";
#endif
    if (void* lib = dlopen(cc, RTLD_LAZY | RTLD_NOLOAD)) {
      version = call(dlsym(lib, "TF_Version"));
      dlclose(lib);  // the reference RTLD_NOLOAD took; TensorFlow keeps it loaded
    }
  }
  return version;
}

// "2.21" of "2.21.0" or "2.21.0-rc1": releases of one minor version keep the ABI.
std::string MinorVersion(const std::string& v) {
  const size_t first = v.find('.');
  if (first == std::string::npos) return v;
  return v.substr(0, v.find('.', first + 1));
}

// "" when the running TensorFlow is the one the plugin was built for (or cannot be
// told), else the line that says it is not.
std::string VersionMismatch() {
  const std::string running = RunningTfVersion();
  if (running.empty() || MinorVersion(running) == MinorVersion(TFMPS_TF_VERSION)) return "";
  return std::string("tf-mps: this device plugin was built for TensorFlow ") + TFMPS_TF_VERSION +
         " but runs in " + running + "; no tf-mps device (rebuild it)";
}

struct Config {
  const char* type = nullptr;  // nullptr: no device
  std::string why_not;
};

const Config& Cfg() {
  static const Config* c = [] {
    auto* c = new Config();
    c->type = tfmps::device::ConfiguredDeviceType(&c->why_not);
    if (c->type != nullptr) {
      c->why_not = VersionMismatch();
      if (!c->why_not.empty()) {
        std::fprintf(stderr, "%s\n", c->why_not.c_str());
        c->type = nullptr;
        return c;
      }
      c->why_not = tfmps::device::Probe();
      if (!c->why_not.empty()) {
        std::fprintf(stderr, "tf-mps: no tf-mps device: %s\n", c->why_not.c_str());
        c->type = nullptr;
      }
    }
    return c;
  }();
  return *c;
}

void Fail(TF_Status* status, const std::string& message) {
  if (message.empty()) {
    TF_SetStatus(status, TF_OK, "");
  } else {
    TF_SetStatus(status, TF_INTERNAL, ("tf-mps device: " + message).c_str());
  }
}

}  // namespace

struct SP_Event_st {
  tfmps::device::Event* event;
};
struct SP_Timer_st {
  uint64_t start_ns = 0, stop_ns = 0;
};

namespace {

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

// ------------------------------------------------------------------ memory
void Allocate(const SP_Device*, uint64_t size, int64_t, SP_DeviceMemoryBase* mem) {
  mem->struct_size = SP_DEVICE_MEMORY_BASE_STRUCT_SIZE;
  mem->opaque = tfmps::device::Allocate(size);
  mem->size = mem->opaque != nullptr ? size : 0;
}

void Deallocate(const SP_Device*, SP_DeviceMemoryBase* mem) {
  tfmps::device::Deallocate(mem->opaque);
  mem->opaque = nullptr;
  mem->size = 0;
}

void* HostAllocate(const SP_Device*, uint64_t size) {
  return std::aligned_alloc(64, (size + 63) / 64 * 64);
}
void HostDeallocate(const SP_Device*, void* mem) { std::free(mem); }

TF_Bool AllocatorStats(const SP_Device*, SP_AllocatorStats* stats) {
  const tfmps::device::MemoryStats s = tfmps::device::Stats();
  stats->struct_size = SP_ALLOCATORSTATS_STRUCT_SIZE;
  stats->num_allocs = s.num_allocs;
  stats->bytes_in_use = s.bytes_in_use;
  stats->peak_bytes_in_use = s.peak_bytes_in_use;
  stats->largest_alloc_size = s.largest_alloc_size;
  stats->has_bytes_limit = 1;
  stats->bytes_limit = static_cast<int64_t>(tfmps::device::MemoryLimit());
  return 1;
}

TF_Bool MemoryUsage(const SP_Device*, int64_t* free, int64_t* total) {
  const int64_t limit = static_cast<int64_t>(tfmps::device::MemoryLimit());
  *total = limit;
  *free = limit - tfmps::device::Stats().bytes_in_use;
  if (*free < 0) *free = 0;
  return 1;
}

// ------------------------------------------------------------------ streams, events
void CreateStream(const SP_Device*, SP_Stream* stream, TF_Status* status) {
  tfmps::device::Stream* s = tfmps::device::NewStream();
  if (s == nullptr) {
    *stream = nullptr;
    Fail(status, "no command queue");
    return;
  }
  *stream = new SP_Stream_st{s};
  Fail(status, "");
}
void DestroyStream(const SP_Device*, SP_Stream stream) {
  if (stream == nullptr) return;
  tfmps::device::DeleteStream(stream->stream);
  delete stream;
}
void StreamDependency(const SP_Device*, SP_Stream dependent, SP_Stream other, TF_Status* status) {
  Fail(status, tfmps::device::AddDependency(dependent->stream, other->stream));
}
void StreamStatus(const SP_Device*, SP_Stream stream, TF_Status* status) {
  // The sticky error of completed work; queued work is not waited for.
  Fail(status, tfmps::device::StreamError(stream->stream));
}

void CreateEvent(const SP_Device*, SP_Event* event, TF_Status* status) {
  tfmps::device::Event* e = tfmps::device::NewEvent();
  if (e == nullptr) {
    *event = nullptr;
    Fail(status, "no shared event");
    return;
  }
  *event = new SP_Event_st{e};
  Fail(status, "");
}
void DestroyEvent(const SP_Device*, SP_Event event) {
  if (event == nullptr) return;
  tfmps::device::DeleteEvent(event->event);
  delete event;
}
SE_EventStatus EventState(const SP_Device*, SP_Event event) {
  switch (tfmps::device::Status(event->event)) {
    case EventStatus::kComplete: return SE_EVENT_COMPLETE;
    case EventStatus::kPending: return SE_EVENT_PENDING;
    case EventStatus::kError: break;
  }
  return SE_EVENT_ERROR;
}
void RecordEvent(const SP_Device*, SP_Stream stream, SP_Event event, TF_Status* status) {
  Fail(status, tfmps::device::Record(stream->stream, event->event));
}
void WaitForEvent(const SP_Device* const, SP_Stream stream, SP_Event event, TF_Status* const status) {
  Fail(status, tfmps::device::WaitFor(stream->stream, event->event));
}
void BlockHostForEvent(const SP_Device*, SP_Event event, TF_Status* status) {
  Fail(status, tfmps::device::BlockHostFor(event->event));
}
void BlockHostUntilDone(const SP_Device*, SP_Stream stream, TF_Status* status) {
  Fail(status, tfmps::device::Synchronize(stream->stream));
}
void SynchronizeAll(const SP_Device*, TF_Status* status) { Fail(status, tfmps::device::SynchronizeAll()); }

TF_Bool HostCallback(const SP_Device*, SP_Stream stream, SE_StatusCallbackFn fn, void* arg) {
  tfmps::device::HostCallback(stream->stream, [fn, arg](const std::string& error) {
    TF_Status* s = TF_NewStatus();
    Fail(s, error);
    fn(arg, s);
    TF_DeleteStatus(s);
  });
  return 1;
}

// ------------------------------------------------------------------ timers
void CreateTimer(const SP_Device*, SP_Timer* timer, TF_Status* status) {
  *timer = new SP_Timer_st();
  Fail(status, "");
}
void DestroyTimer(const SP_Device*, SP_Timer timer) { delete timer; }
void StartTimer(const SP_Device*, SP_Stream stream, SP_Timer timer, TF_Status* status) {
  Fail(status, tfmps::device::Synchronize(stream->stream));
  timer->start_ns = NowNs();
}
void StopTimer(const SP_Device*, SP_Stream stream, SP_Timer timer, TF_Status* status) {
  Fail(status, tfmps::device::Synchronize(stream->stream));
  timer->stop_ns = NowNs();
}
uint64_t TimerNs(SP_Timer timer) { return timer->stop_ns - timer->start_ns; }

// ------------------------------------------------------------------ copies and fills
// Memory is unified: a copy is a host memcpy once the queued work that may write the
// source or use the destination has completed: the stream's own for a copy to the host
// (TF orders it after the producing stream with create_stream_dependency), every
// stream's for a write into device memory (SynchronizeBeforeHostWrite: the destination
// may be memory just freed by a tensor that queued compute-stream kernels still use).
// The host source of an asynchronous htod copy is read before the call returns, so TF
// may reuse it at once.
void MemcpyDtoH(const SP_Device*, SP_Stream stream, void* dst, const SP_DeviceMemoryBase* src, uint64_t size,
                TF_Status* status) {
  const std::string e = tfmps::device::Synchronize(stream->stream);
  if (e.empty() && size != 0) std::memcpy(dst, src->opaque, size);
  Fail(status, e);
}
void MemcpyHtoD(const SP_Device*, SP_Stream stream, SP_DeviceMemoryBase* dst, const void* src, uint64_t size,
                TF_Status* status) {
  const std::string e = tfmps::device::SynchronizeBeforeHostWrite(stream->stream);
  if (e.empty() && size != 0) std::memcpy(dst->opaque, src, size);
  Fail(status, e);
}
void MemcpyDtoD(const SP_Device*, SP_Stream stream, SP_DeviceMemoryBase* dst, const SP_DeviceMemoryBase* src,
                uint64_t size, TF_Status* status) {
  const std::string e = tfmps::device::SynchronizeBeforeHostWrite(stream->stream);
  if (e.empty() && size != 0) std::memmove(dst->opaque, src->opaque, size);
  Fail(status, e);
}
void SyncMemcpyDtoH(const SP_Device*, void* dst, const SP_DeviceMemoryBase* src, uint64_t size, TF_Status* status) {
  const std::string e = tfmps::device::SynchronizeAll();
  if (e.empty() && size != 0) std::memcpy(dst, src->opaque, size);
  Fail(status, e);
}
void SyncMemcpyHtoD(const SP_Device*, SP_DeviceMemoryBase* dst, const void* src, uint64_t size, TF_Status* status) {
  const std::string e = tfmps::device::SynchronizeAll();
  if (e.empty() && size != 0) std::memcpy(dst->opaque, src, size);
  Fail(status, e);
}
void SyncMemcpyDtoD(const SP_Device*, SP_DeviceMemoryBase* dst, const SP_DeviceMemoryBase* src, uint64_t size,
                    TF_Status* status) {
  const std::string e = tfmps::device::SynchronizeAll();
  if (e.empty() && size != 0) std::memmove(dst->opaque, src->opaque, size);
  Fail(status, e);
}
void Memset(const SP_Device*, SP_Stream stream, SP_DeviceMemoryBase* location, uint8_t pattern, uint64_t size,
            TF_Status* status) {
  const std::string e = tfmps::device::SynchronizeBeforeHostWrite(stream->stream);
  if (e.empty() && size != 0) std::memset(location->opaque, pattern, size);
  Fail(status, e);
}
void MemZero(const SP_Device* d, SP_Stream stream, SP_DeviceMemoryBase* location, uint64_t size, TF_Status* status) {
  Memset(d, stream, location, 0, size, status);
}
// size is in bytes (a multiple of 4), as StreamExecutor's Memset32 takes it.
void Memset32(const SP_Device*, SP_Stream stream, SP_DeviceMemoryBase* location, uint32_t pattern, uint64_t size,
              TF_Status* status) {
  const std::string e = tfmps::device::SynchronizeBeforeHostWrite(stream->stream);
  if (e.empty()) {
    auto* p = static_cast<uint32_t*>(location->opaque);
    for (uint64_t i = 0; i < size / 4; ++i) p[i] = pattern;
  }
  Fail(status, e);
}

// ------------------------------------------------------------------ platform
void DeviceCount(const SP_Platform*, int* count, TF_Status* status) {
  *count = Cfg().type != nullptr ? 1 : 0;
  Fail(status, "");
}

void CreateDevice(const SP_Platform*, SE_CreateDeviceParams* params, TF_Status* status) {
  SP_Device* d = params->device;
  d->struct_size = SP_DEVICE_STRUCT_SIZE;
  d->ordinal = params->ordinal;
  d->device_handle = nullptr;
  d->hardware_name = tfmps::device::HardwareName();
#if defined(__APPLE__)
  d->device_vendor = "Apple";
#else
  d->device_vendor = "tf-mps Metal emulation";
#endif
  d->pci_bus_id = nullptr;
  Fail(status, "");
}
void DestroyDevice(const SP_Platform*, SP_Device*) {}

void CreateDeviceFns(const SP_Platform*, SE_CreateDeviceFnsParams* params, TF_Status* status) {
  params->device_fns->struct_size = SP_DEVICE_FNS_STRUCT_SIZE;
  Fail(status, "");
}
void DestroyDeviceFns(const SP_Platform*, SP_DeviceFns*) {}

void CreateStreamExecutor(const SP_Platform*, SE_CreateStreamExecutorParams* params, TF_Status* status) {
  SP_StreamExecutor* se = params->stream_executor;
  se->struct_size = SP_STREAMEXECUTOR_STRUCT_SIZE;
  se->allocate = Allocate;
  se->deallocate = Deallocate;
  se->host_memory_allocate = HostAllocate;
  se->host_memory_deallocate = HostDeallocate;
  se->get_allocator_stats = AllocatorStats;
  se->device_memory_usage = MemoryUsage;
  se->create_stream = CreateStream;
  se->destroy_stream = DestroyStream;
  se->create_stream_dependency = StreamDependency;
  se->get_stream_status = StreamStatus;
  se->create_event = CreateEvent;
  se->destroy_event = DestroyEvent;
  se->get_event_status = EventState;
  se->record_event = RecordEvent;
  se->wait_for_event = WaitForEvent;
  se->create_timer = CreateTimer;
  se->destroy_timer = DestroyTimer;
  se->start_timer = StartTimer;
  se->stop_timer = StopTimer;
  se->memcpy_dtoh = MemcpyDtoH;
  se->memcpy_htod = MemcpyHtoD;
  se->memcpy_dtod = MemcpyDtoD;
  se->sync_memcpy_dtoh = SyncMemcpyDtoH;
  se->sync_memcpy_htod = SyncMemcpyHtoD;
  se->sync_memcpy_dtod = SyncMemcpyDtoD;
  se->block_host_for_event = BlockHostForEvent;
  se->block_host_until_done = BlockHostUntilDone;
  se->synchronize_all_activity = SynchronizeAll;
  se->mem_zero = MemZero;
  se->memset = Memset;
  se->memset32 = Memset32;
  se->host_callback = HostCallback;
  Fail(status, "");
}
void DestroyStreamExecutor(const SP_Platform*, SP_StreamExecutor*) {}

void CreateTimerFns(const SP_Platform*, SP_TimerFns* fns, TF_Status* status) {
  fns->struct_size = SP_TIMER_FNS_STRUCT_SIZE;
  fns->nanoseconds = TimerNs;
  Fail(status, "");
}
void DestroyTimerFns(const SP_Platform*, SP_TimerFns*) {}

void DestroyPlatform(SP_Platform*) {}
void DestroyPlatformFns(SP_PlatformFns*) {}

}  // namespace

// ------------------------------------------------------------------ graph pass
namespace {

// The device type of the latest SE_InitPlugin, for the TF_InitGraph that follows it in the
// same load (TensorFlow aborts on a second optimizer for one device type too).
const char*& RegisteredType() {
  static const char* type = nullptr;
  return type;
}

// Grappler's pass for the device: the graph as it is. What matters is the configuration
// below; TensorFlow wants an optimize function all the same.
void OptimizeGraph(void*, const TF_Buffer* graph, const TF_GrapplerItem*, TF_Buffer* out, TF_Status* status) {
  void* copy = std::malloc(graph->length > 0 ? graph->length : 1);
  if (copy == nullptr) {
    TF_SetStatus(status, TF_RESOURCE_EXHAUSTED, "tf-mps graph pass: no memory for the graph");
    return;
  }
  if (graph->length > 0) std::memcpy(copy, graph->data, graph->length);
  out->data = copy;
  out->length = graph->length;
  out->data_deallocator = [](void* data, size_t) { std::free(data); };
  TF_SetStatus(status, TF_OK, "");
}

}  // namespace

// Grappler configuration for graphs on the device: the layout optimizer off, because it
// would wrap NHWC convolutions in NHWC<->NCHW transposes for a GPU-like device, and
// tf-mps's kernels take NHWC (MPS's images are channel-last too).
extern "C" __attribute__((visibility("default"))) void TF_InitGraph(TP_OptimizerRegistrationParams* params,
                                                                     TF_Status* status) {
  params->struct_size = TP_OPTIMIZER_REGISTRATION_PARAMS_STRUCT_SIZE;
  params->device_type = RegisteredType() != nullptr ? RegisteredType() : "MPS";
  params->optimizer_configs->struct_size = TP_OPTIMIZER_CONFIGS_STRUCT_SIZE;
  params->optimizer_configs->layout_optimizer = TF_TriState_Off;
  params->optimizer->struct_size = TP_OPTIMIZER_STRUCT_SIZE;
  params->optimizer->create_func = nullptr;
  params->optimizer->optimize_func = OptimizeGraph;
  params->optimizer->destroy_func = nullptr;
  TF_SetStatus(status, TF_OK, "");
}

extern "C" __attribute__((visibility("default"))) void SE_InitPlugin(SE_PlatformRegistrationParams* params,
                                                                      TF_Status* status) {
  // TensorFlow aborts when one platform name is registered twice (the plugins folder
  // and an explicit load of the same library): a second registration gets its own name
  // and no device, so loading twice is harmless.
  static int registrations = 0;
  // (TF wants names and types of [A-Z][A-Z_]*: no digits.)
  static const char* const kNames[] = {"METAL", "METAL_SECOND", "METAL_THIRD", "METAL_MORE"};
  static const char* const kTypes[] = {"MPS", "MPS_SECOND", "MPS_THIRD", "MPS_MORE"};
  const int n = registrations < 4 ? registrations : 3;
  ++registrations;
  RegisteredType() = nullptr;

  params->struct_size = SE_PLATFORM_REGISTRATION_PARAMS_STRUCT_SIZE;
  SP_Platform* platform = params->platform;
  platform->struct_size = SP_PLATFORM_STRUCT_SIZE;
  platform->name = kNames[n];
  const Config& c = Cfg();
  platform->type = n == 0 && c.type != nullptr ? c.type : kTypes[n];
  RegisteredType() = platform->type;
  platform->supports_unified_memory = 0;
  platform->use_bfc_allocator = 1;
  // Grow TF's BFC pool as needed instead of taking the whole limit at the first
  // allocation: on a Mac that memory is the system's (unified), and on the emulation the
  // fake's zero-filled 3.7 GB first allocation took 3-10 s per process.
  platform->force_memory_growth = 1;

  SP_PlatformFns* fns = params->platform_fns;
  fns->struct_size = SP_PLATFORM_FNS_STRUCT_SIZE;
  fns->get_device_count = n == 0 ? DeviceCount : [](const SP_Platform*, int* count, TF_Status* s) {
    *count = 0;
    Fail(s, "");
  };
  fns->create_device = CreateDevice;
  fns->destroy_device = DestroyDevice;
  fns->create_device_fns = CreateDeviceFns;
  fns->destroy_device_fns = DestroyDeviceFns;
  fns->create_stream_executor = CreateStreamExecutor;
  fns->destroy_stream_executor = DestroyStreamExecutor;
  fns->create_timer_fns = CreateTimerFns;
  fns->destroy_timer_fns = DestroyTimerFns;
  params->destroy_platform = DestroyPlatform;
  params->destroy_platform_fns = DestroyPlatformFns;
  Fail(status, "");
}
