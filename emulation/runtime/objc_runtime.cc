// A small Objective-C runtime for the Apple (non-fragile, 64-bit) ABI, so that the
// project's ARC Objective-C++ (ops/**/*.mm, compiled by clang-19 for the normal Linux
// target with -fobjc-runtime=macosx-14.0) runs on Linux against the emulation's fakes of
// Foundation, Metal and MPS. Linux only; a Mac uses Apple's libobjc.
//
// What clang emits and what this file provides: ../../docs/metal-emulation.md and
// ../../../shared/METAL_EMULATION.md. In short:
//  * Metadata: each library's objc_classlist / objc_catlist / objc_selrefs sections,
//    handed over by image_register.c's constructor. Selector references are uniqued (a
//    SEL is then one pointer per name across libraries), classes realized, categories
//    attached.
//  * A class's `cache` word (which the compiler initializes to &_objc_empty_cache) holds
//    this runtime's ClassInfo once realized: its methods keyed by uniqued SEL, C++
//    ivar constructor/destructor, +initialize state, live-instance count.
//  * Objects carry a 16-byte header in front (retain count, flags), so objc_retain /
//    objc_release never send messages. Classes, constant strings and blocks are not
//    counted (blocks go to libBlocksRuntime).
//  * objc_msgSend and friends are in msgsend_x86_64.S: they save the argument registers,
//    call objc_emu_lookup* below and tail-jump to the method.
// Correctness over speed: one reader-writer lock guards the method tables; the tests
// run threads through every path.
#include <Block.h>
#include <pthread.h>

#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#define OBJC_EMU_EXPORT extern "C" __attribute__((visibility("default")))

extern "C" {
// libBlocksRuntime's block classes (Block_private.h declares them as void*[32]).
extern void* _NSConcreteStackBlock[32];
extern void* _NSConcreteMallocBlock[32];
extern void* _NSConcreteGlobalBlock[32];
// The constant-string class, defined by the Foundation fake (weak: the runtime's own
// tests may run without Foundation).
extern char __CFConstantStringClassReference[] __attribute__((weak));
}

namespace {

// ------------------------------------------------------------------ the Apple ABI
struct ClassInfo;
using IMP = void (*)();
using SEL = const char*;  // after uniquing: the canonical pointer for a name

struct method_t {
  SEL name;
  const char* types;
  IMP imp;
};
struct method_list_t {
  uint32_t entsize_and_flags;
  uint32_t count;
  method_t methods[1];
};
struct class_ro_t {
  uint32_t flags;
  uint32_t instance_start;
  uint32_t instance_size;
  uint32_t reserved;
  const uint8_t* ivar_layout;
  const char* name;
  method_list_t* base_methods;
  void* base_protocols;
  void* ivars;
  const uint8_t* weak_ivar_layout;
  void* base_properties;
};
struct class_t {
  class_t* isa;
  class_t* superclass;
  void* cache;   // &_objc_empty_cache until realized, then ClassInfo*
  void* vtable;
  class_ro_t* ro;
};
struct category_t {
  const char* name;
  class_t* cls;
  method_list_t* instance_methods;
  method_list_t* class_methods;
  void* protocols;
  void* instance_properties;
};
struct objc_object {
  class_t* isa;
};
using id = objc_object*;

constexpr uint32_t kRoMeta = 1u << 0;
constexpr uint32_t kRoHasCxxStructors = 1u << 2;
constexpr uint32_t kMethodListFlagMask = 0xffff0003u;
constexpr uint32_t kMethodListIsRelative = 0x80000000u;

[[noreturn]] void Fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void Fatal(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fputs("tf-mps objc runtime: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
  std::fflush(stderr);
  std::abort();
}

}  // namespace

extern "C" {
// The compiler points every class's cache at this word; realization replaces it.
__attribute__((visibility("default"))) void* _objc_empty_cache = nullptr;
}

namespace {

// ------------------------------------------------------------------ runtime state
struct ClassInfo {
  class_t* cls = nullptr;
  bool meta = false;
  ClassInfo* instance_class = nullptr;  // for a metaclass: its class's info
  bool static_instances = false;        // constant strings: never counted or freed
  std::unordered_map<SEL, IMP> methods; // own methods, categories' over base ones
  IMP cxx_construct = nullptr;
  IMP cxx_destruct = nullptr;
  std::atomic<int> init_state{0};  // 0 not initialized, 1 running, 2 done
  pthread_t init_thread{};
  std::atomic<int64_t> live{0};
};

struct Runtime {
  std::shared_mutex methods_mu;  // ClassInfo::methods of every class, realization
  std::mutex selectors_mu;
  std::unordered_map<std::string_view, SEL> selectors;
  std::unordered_map<std::string_view, class_t*> classes;  // by name, non-meta only
  std::recursive_mutex initialize_mu;
  std::mutex weak_mu;
  std::unordered_map<id, std::vector<id*>> weak_refs;
  std::mutex sync_mu;
  std::unordered_map<id, std::recursive_mutex*> sync_locks;
  std::mutex property_mu[64];
  std::atomic<int64_t> live{0};
};

Runtime& R() {
  static Runtime* runtime = new Runtime();  // never destroyed: used until exit
  return *runtime;
}

SEL RegisterSelector(const char* name) {
  Runtime& r = R();
  std::lock_guard<std::mutex> lock(r.selectors_mu);
  auto it = r.selectors.find(name);
  if (it != r.selectors.end()) return it->second;
  r.selectors.emplace(std::string_view(name), name);
  return name;
}

struct ObjectHeader {
  std::atomic<uintptr_t> retain_count;  // 1 after allocation; 0 once deallocating
  std::atomic<uint32_t> weakly_referenced;
  uint32_t magic;
};
constexpr size_t kHeaderSize = 16;
constexpr uint32_t kMagic = 0x6f626a63;  // "objc"
static_assert(sizeof(ObjectHeader) <= kHeaderSize, "header must fit in 16 bytes");

ObjectHeader* HeaderOf(id obj) {
  return reinterpret_cast<ObjectHeader*>(reinterpret_cast<char*>(obj) - kHeaderSize);
}

bool IsBlockClass(const void* isa) {
  return isa == _NSConcreteMallocBlock || isa == _NSConcreteStackBlock ||
         isa == _NSConcreteGlobalBlock;
}

ClassInfo* Realize(class_t* cls);

void AddMethods(ClassInfo* info, const method_list_t* list, bool override_existing) {
  if (list == nullptr) return;
  const uint32_t entsize = list->entsize_and_flags & ~kMethodListFlagMask;
  if ((list->entsize_and_flags & kMethodListIsRelative) != 0 || entsize != sizeof(method_t)) {
    Fatal("class %s: method list with entsize/flags 0x%x is not the layout this runtime "
          "reads (absolute 24-byte entries); was it compiled by another clang?",
          info->cls->ro->name, list->entsize_and_flags);
  }
  for (uint32_t i = 0; i < list->count; ++i) {
    const method_t& m = list->methods[i];
    SEL sel = RegisterSelector(m.name);
    if (override_existing) {
      info->methods[sel] = m.imp;
    } else {
      info->methods.emplace(sel, m.imp);
    }
  }
}

// Caller holds methods_mu exclusively.
ClassInfo* RealizeLocked(class_t* cls) {
  if (cls->cache != &_objc_empty_cache && cls->cache != nullptr) {
    return static_cast<ClassInfo*>(cls->cache);
  }
  if (cls->superclass != nullptr) RealizeLocked(cls->superclass);
  auto* info = new ClassInfo();
  info->cls = cls;
  info->meta = (cls->ro->flags & kRoMeta) != 0;
  AddMethods(info, cls->ro->base_methods, /*override_existing=*/false);
  if ((cls->ro->flags & kRoHasCxxStructors) != 0) {
    auto c = info->methods.find(RegisterSelector(".cxx_construct"));
    auto d = info->methods.find(RegisterSelector(".cxx_destruct"));
    if (c != info->methods.end()) info->cxx_construct = c->second;
    if (d != info->methods.end()) info->cxx_destruct = d->second;
  }
  if (!info->meta) {
    // Ivar offsets are constants in the objects (read-only OBJC_IVAR_$ symbols), so a
    // superclass whose size differs from what the subclass was compiled against cannot
    // be fixed up here: refuse loudly instead of corrupting memory.
    if (cls->superclass != nullptr &&
        cls->ro->instance_start < cls->superclass->ro->instance_size) {
      Fatal("class %s starts its ivars at %u, but its superclass %s is %u bytes: the "
            "declarations it was compiled against do not match",
            cls->ro->name, cls->ro->instance_start, cls->superclass->ro->name,
            cls->superclass->ro->instance_size);
    }
    info->static_instances = __CFConstantStringClassReference != nullptr &&
                             reinterpret_cast<void*>(cls) ==
                                 static_cast<void*>(__CFConstantStringClassReference);
    R().classes.emplace(std::string_view(cls->ro->name), cls);
  }
  cls->cache = info;
  if (!info->meta) {
    ClassInfo* meta = RealizeLocked(cls->isa);
    meta->instance_class = info;
  }
  return info;
}

ClassInfo* Realize(class_t* cls) {
  void* c = __atomic_load_n(&cls->cache, __ATOMIC_ACQUIRE);
  if (c != &_objc_empty_cache && c != nullptr) return static_cast<ClassInfo*>(c);
  std::unique_lock<std::shared_mutex> lock(R().methods_mu);
  return RealizeLocked(cls);
}

// The receiver's method for sel, starting the search at `start`; nullptr if none.
IMP FindMethod(class_t* start, SEL sel) {
  std::shared_lock<std::shared_mutex> lock(R().methods_mu);
  for (class_t* c = start; c != nullptr; c = c->superclass) {
    auto* info = static_cast<ClassInfo*>(c->cache);
    if (info == nullptr || c->cache == &_objc_empty_cache) {
      lock.unlock();
      Realize(c);
      lock.lock();
      info = static_cast<ClassInfo*>(c->cache);
    }
    auto it = info->methods.find(sel);
    if (it != info->methods.end()) return it->second;
  }
  return nullptr;
}

SEL Canonical(SEL sel) { return RegisterSelector(sel); }

void Initialize(ClassInfo* info);

// +initialize before the first message to a class or its instances: superclasses first,
// once per class; other threads wait until it has returned, the initializing thread may
// message the class meanwhile (Apple's rules).
void EnsureInitialized(ClassInfo* info) {
  ClassInfo* k = info->meta ? info->instance_class : info;
  if (k == nullptr || k->init_state.load(std::memory_order_acquire) == 2) return;
  Initialize(k);
}

void Initialize(ClassInfo* k) {
  if (k->cls->superclass != nullptr) EnsureInitialized(Realize(k->cls->superclass));
  std::lock_guard<std::recursive_mutex> lock(R().initialize_mu);
  if (k->init_state.load(std::memory_order_acquire) != 0) return;  // done, or us running
  k->init_state.store(1, std::memory_order_release);
  static const SEL initialize = RegisterSelector("initialize");
  if (IMP imp = FindMethod(k->cls->isa, initialize)) {
    reinterpret_cast<void (*)(id, SEL)>(imp)(reinterpret_cast<id>(k->cls), initialize);
  }
  k->init_state.store(2, std::memory_order_release);
}

[[noreturn]] void Unrecognized(id self, SEL sel) {
  ClassInfo* info = Realize(self->isa);
  const bool is_class = info->meta;
  Fatal("%c[%s %s]: unrecognized selector sent to %s %p", is_class ? '+' : '-',
        self->isa->ro->name, sel, is_class ? "class" : "instance", static_cast<void*>(self));
}

// Blocks are objects on Apple platforms (NSBlock): the messages ARC code sends them.
id BlockCopy(id self, SEL) { return static_cast<id>(_Block_copy(self)); }
void BlockRelease(id self, SEL) { _Block_release(self); }
id BlockSelf(id self, SEL) { return self; }
extern "C" id objc_autorelease(id);
id BlockAutorelease(id self, SEL) { return objc_autorelease(self); }

IMP BlockMethod(id self, SEL sel) {
  const std::string_view name(sel);
  if (name == "copy" || name == "retain") return reinterpret_cast<IMP>(&BlockCopy);
  if (name == "release") return reinterpret_cast<IMP>(&BlockRelease);
  if (name == "autorelease") return reinterpret_cast<IMP>(&BlockAutorelease);
  if (name == "self") return reinterpret_cast<IMP>(&BlockSelf);
  Fatal("-[__NSBlock %s]: unrecognized selector sent to block %p (blocks answer copy, "
        "retain, release, autorelease and self here)",
        sel, static_cast<void*>(self));
}

IMP Lookup(id self, class_t* start, SEL sel) {
  class_t* isa = self->isa;
  if (IsBlockClass(isa)) return BlockMethod(self, sel);
  EnsureInitialized(Realize(isa));
  IMP imp = FindMethod(start, sel);
  if (imp == nullptr) {
    SEL c = Canonical(sel);
    if (c != sel) imp = FindMethod(start, c);
  }
  if (imp == nullptr) Unrecognized(self, sel);
  return imp;
}

template <typename R, typename... A>
R Send(id self, SEL sel, A... args) {
  IMP imp = Lookup(self, self->isa, sel);
  return reinterpret_cast<R (*)(id, SEL, A...)>(imp)(self, sel, args...);
}

SEL Sel(const char* name) { return RegisterSelector(name); }

bool IsUncounted(id obj, ClassInfo** info_out = nullptr) {
  ClassInfo* info = Realize(obj->isa);
  if (info_out) *info_out = info;
  return info->meta || info->static_instances;
}

std::mutex& PropertyLock(const void* slot) {
  return R().property_mu[(reinterpret_cast<uintptr_t>(slot) >> 4) % 64];
}

// ------------------------------------------------------------------ autorelease pools
struct Pool {
  std::vector<id> objects;
  size_t depth = 0;
  bool warned = false;
};
thread_local Pool t_pool;

}  // namespace

// =================================================================== entry points
extern "C" {

// --- lookup, called by msgsend_x86_64.S with the argument registers saved.
__attribute__((visibility("hidden"))) IMP objc_emu_lookup(id self, SEL sel) {
  return Lookup(self, self->isa, sel);
}
struct objc_super2 {
  id receiver;
  class_t* current_class;
};
__attribute__((visibility("hidden"))) IMP objc_emu_lookup_super2(objc_super2* super, SEL sel) {
  return Lookup(super->receiver, super->current_class->superclass, sel);
}

// --- images
struct objc_emu_image {
  void** classlist_begin; void** classlist_end;
  void** catlist_begin; void** catlist_end;
  void** selrefs_begin; void** selrefs_end;
  const char* name;
};

OBJC_EMU_EXPORT void objc_emu_register_image(const objc_emu_image* image) {
  for (void** p = image->selrefs_begin; p != image->selrefs_end; ++p) {
    *p = const_cast<char*>(RegisterSelector(static_cast<const char*>(*p)));
  }
  for (void** p = image->classlist_begin; p != image->classlist_end; ++p) {
    Realize(static_cast<class_t*>(*p));
  }
  std::unique_lock<std::shared_mutex> lock(R().methods_mu);
  for (void** p = image->catlist_begin; p != image->catlist_end; ++p) {
    auto* cat = static_cast<category_t*>(*p);
    ClassInfo* cls = RealizeLocked(cat->cls);
    ClassInfo* meta = RealizeLocked(cat->cls->isa);
    // Category methods replace the class's own, as in Apple's runtime.
    AddMethods(cls, cat->instance_methods, /*override_existing=*/true);
    AddMethods(meta, cat->class_methods, /*override_existing=*/true);
  }
}

// --- Apple's runtime API
OBJC_EMU_EXPORT SEL sel_registerName(const char* name) { return RegisterSelector(name); }
OBJC_EMU_EXPORT const char* sel_getName(SEL sel) { return sel; }

OBJC_EMU_EXPORT class_t* object_getClass(id obj) { return obj ? obj->isa : nullptr; }
OBJC_EMU_EXPORT const char* class_getName(class_t* cls) { return cls ? cls->ro->name : "nil"; }
OBJC_EMU_EXPORT const char* object_getClassName(id obj) {
  return obj ? obj->isa->ro->name : "nil";
}
OBJC_EMU_EXPORT class_t* class_getSuperclass(class_t* cls) { return cls ? cls->superclass : nullptr; }
OBJC_EMU_EXPORT size_t class_getInstanceSize(class_t* cls) { return cls ? cls->ro->instance_size : 0; }
OBJC_EMU_EXPORT int class_isMetaClass(class_t* cls) { return cls && (cls->ro->flags & kRoMeta) != 0; }
OBJC_EMU_EXPORT IMP class_getMethodImplementation(class_t* cls, SEL sel) {
  return cls ? FindMethod(cls, Canonical(sel)) : nullptr;
}
OBJC_EMU_EXPORT int class_respondsToSelector(class_t* cls, SEL sel) {
  return class_getMethodImplementation(cls, sel) != nullptr;
}
OBJC_EMU_EXPORT class_t* objc_getClass(const char* name) {
  std::shared_lock<std::shared_mutex> lock(R().methods_mu);
  auto it = R().classes.find(name);
  return it == R().classes.end() ? nullptr : it->second;
}
OBJC_EMU_EXPORT class_t* objc_lookUpClass(const char* name) { return objc_getClass(name); }

OBJC_EMU_EXPORT id class_createInstance(class_t* cls, size_t extra) {
  if (cls == nullptr) return nullptr;
  ClassInfo* info = Realize(cls);
  if (info->meta) Fatal("class_createInstance of metaclass %s", cls->ro->name);
  const size_t size = kHeaderSize + cls->ro->instance_size + extra;
  void* mem = std::calloc(1, size);
  if (mem == nullptr) return nullptr;
  auto* header = static_cast<ObjectHeader*>(mem);
  header->retain_count.store(1, std::memory_order_relaxed);
  header->magic = kMagic;
  id obj = reinterpret_cast<id>(static_cast<char*>(mem) + kHeaderSize);
  obj->isa = cls;
  info->live.fetch_add(1, std::memory_order_relaxed);
  R().live.fetch_add(1, std::memory_order_relaxed);
  // C++ ivars: root class first.
  std::vector<ClassInfo*> chain;
  for (class_t* c = cls; c != nullptr; c = c->superclass) chain.push_back(Realize(c));
  static const SEL construct = RegisterSelector(".cxx_construct");
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    if ((*it)->cxx_construct != nullptr) {
      reinterpret_cast<id (*)(id, SEL)>((*it)->cxx_construct)(obj, construct);
    }
  }
  return obj;
}

OBJC_EMU_EXPORT id object_dispose(id obj) {
  if (obj == nullptr) return nullptr;
  ObjectHeader* header = HeaderOf(obj);
  if (header->magic != kMagic) {
    Fatal("object_dispose(%p): not an object of this runtime (or disposed twice)",
          static_cast<void*>(obj));
  }
  Runtime& r = R();
  if (header->weakly_referenced.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(r.weak_mu);
    auto it = r.weak_refs.find(obj);
    if (it != r.weak_refs.end()) {
      for (id* loc : it->second) *loc = nullptr;
      r.weak_refs.erase(it);
    }
  }
  static const SEL destruct = RegisterSelector(".cxx_destruct");
  for (class_t* c = obj->isa; c != nullptr; c = c->superclass) {
    ClassInfo* info = Realize(c);
    if (info->cxx_destruct != nullptr) {
      reinterpret_cast<void (*)(id, SEL)>(info->cxx_destruct)(obj, destruct);
    }
  }
  {
    std::lock_guard<std::mutex> lock(r.sync_mu);
    auto it = r.sync_locks.find(obj);
    if (it != r.sync_locks.end()) {
      delete it->second;
      r.sync_locks.erase(it);
    }
  }
  Realize(obj->isa)->live.fetch_sub(1, std::memory_order_relaxed);
  r.live.fetch_sub(1, std::memory_order_relaxed);
  header->magic = 0;
  std::free(header);
  return nullptr;
}

// --- the emulation's own
OBJC_EMU_EXPORT int64_t objc_emu_live_objects(void) { return R().live.load(); }
OBJC_EMU_EXPORT int64_t objc_emu_live_instances(const char* class_name) {
  class_t* cls = objc_getClass(class_name);
  return cls ? Realize(cls)->live.load() : 0;
}
OBJC_EMU_EXPORT void objc_emu_dump_live(void) {
  std::vector<class_t*> classes;
  {
    std::shared_lock<std::shared_mutex> lock(R().methods_mu);
    for (auto& kv : R().classes) classes.push_back(kv.second);
  }
  for (class_t* c : classes) {
    const int64_t n = Realize(c)->live.load();
    if (n != 0) std::fprintf(stderr, "%s %lld\n", c->ro->name, static_cast<long long>(n));
  }
}
OBJC_EMU_EXPORT uintptr_t objc_emu_retain_count(id obj) {
  if (obj == nullptr || IsBlockClass(obj->isa) || IsUncounted(obj)) return 0;
  return HeaderOf(obj)->retain_count.load();
}

// --- allocation shortcuts clang emits for [X alloc], [[X alloc] init], [X new]
OBJC_EMU_EXPORT id objc_alloc(class_t* cls) {
  return cls ? Send<id>(reinterpret_cast<id>(cls), Sel("alloc")) : nullptr;
}
OBJC_EMU_EXPORT id objc_allocWithZone(class_t* cls) {
  return cls ? Send<id, void*>(reinterpret_cast<id>(cls), Sel("allocWithZone:"), nullptr) : nullptr;
}
OBJC_EMU_EXPORT id objc_alloc_init(class_t* cls) {
  id obj = objc_alloc(cls);
  return obj ? Send<id>(obj, Sel("init")) : nullptr;
}
OBJC_EMU_EXPORT id objc_opt_new(class_t* cls) {
  return cls ? Send<id>(reinterpret_cast<id>(cls), Sel("new")) : nullptr;
}
OBJC_EMU_EXPORT class_t* objc_opt_class(id obj) {
  return obj ? Send<class_t*>(obj, Sel("class")) : nullptr;
}
OBJC_EMU_EXPORT id objc_opt_self(id obj) { return obj; }
OBJC_EMU_EXPORT bool objc_opt_isKindOfClass(id obj, class_t* cls) {
  if (obj == nullptr) return false;
  for (class_t* c = obj->isa; c != nullptr; c = c->superclass) {
    if (c == cls) return true;
  }
  return false;
}
OBJC_EMU_EXPORT bool objc_opt_respondsToSelector(id obj, SEL sel) {
  if (obj == nullptr) return false;
  return Send<bool, SEL>(obj, Sel("respondsToSelector:"), sel);
}

// --- ARC
OBJC_EMU_EXPORT id objc_retain(id obj) {
  if (obj == nullptr) return nullptr;
  if (IsBlockClass(obj->isa)) return static_cast<id>(_Block_copy(obj));
  if (IsUncounted(obj)) return obj;
  HeaderOf(obj)->retain_count.fetch_add(1, std::memory_order_relaxed);
  return obj;
}

OBJC_EMU_EXPORT void objc_release(id obj) {
  if (obj == nullptr) return;
  if (IsBlockClass(obj->isa)) {
    _Block_release(obj);
    return;
  }
  if (IsUncounted(obj)) return;
  ObjectHeader* header = HeaderOf(obj);
  const uintptr_t before = header->retain_count.fetch_sub(1, std::memory_order_acq_rel);
  if (before == 1) {
    Send<void>(obj, Sel("dealloc"));
  } else if (before == 0) {
    Fatal("objc_release(%p): over-release of a %s being deallocated", static_cast<void*>(obj),
          obj->isa->ro->name);
  }
}

OBJC_EMU_EXPORT id objc_autorelease(id obj) {
  if (obj == nullptr) return nullptr;
  Pool& pool = t_pool;
  if (pool.depth == 0 && !pool.warned) {
    pool.warned = true;
    std::fprintf(stderr,
                 "tf-mps objc runtime: %s %p autoreleased with no pool in place - just "
                 "leaking (as on macOS); wrap the entry point in @autoreleasepool\n",
                 obj->isa->ro->name, static_cast<void*>(obj));
  }
  pool.objects.push_back(obj);
  return obj;
}

OBJC_EMU_EXPORT void* objc_autoreleasePoolPush(void) {
  Pool& pool = t_pool;
  ++pool.depth;
  return reinterpret_cast<void*>(pool.objects.size() + 1);
}

OBJC_EMU_EXPORT void objc_autoreleasePoolPop(void* token) {
  Pool& pool = t_pool;
  const size_t mark = reinterpret_cast<size_t>(token) - 1;
  if (pool.depth == 0 || mark > pool.objects.size()) {
    Fatal("objc_autoreleasePoolPop(%p): not a pool of this thread", token);
  }
  // Releasing may autorelease more objects into this same pool: drain until empty.
  while (pool.objects.size() > mark) {
    id obj = pool.objects.back();
    pool.objects.pop_back();
    objc_release(obj);
  }
  --pool.depth;
}

OBJC_EMU_EXPORT id objc_autoreleaseReturnValue(id obj) { return objc_autorelease(obj); }
OBJC_EMU_EXPORT id objc_retainAutoreleasedReturnValue(id obj) { return objc_retain(obj); }
OBJC_EMU_EXPORT id objc_claimAutoreleasedReturnValue(id obj) { return objc_retain(obj); }
// The caller does not take ownership: the value stays owned by the pool it is in.
OBJC_EMU_EXPORT id objc_unsafeClaimAutoreleasedReturnValue(id obj) { return obj; }
OBJC_EMU_EXPORT id objc_retainAutorelease(id obj) { return objc_autorelease(objc_retain(obj)); }
OBJC_EMU_EXPORT id objc_retainAutoreleaseReturnValue(id obj) {
  return objc_autorelease(objc_retain(obj));
}
OBJC_EMU_EXPORT id objc_retainBlock(id block) {
  return block ? static_cast<id>(_Block_copy(block)) : nullptr;
}
OBJC_EMU_EXPORT void objc_storeStrong(id* location, id value) {
  value = objc_retain(value);
  id old = *location;
  *location = value;
  objc_release(old);
}

// --- weak references: one table under one lock. An object whose retain count reached
// zero can no longer be loaded (objc_loadWeakRetained never increments from zero), and
// its weak references are cleared before its memory goes.
namespace {
void UnregisterWeakLocked(id* location, id old) {
  auto it = R().weak_refs.find(old);
  if (it == R().weak_refs.end()) return;
  auto& v = it->second;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == location) {
      v[i] = v.back();
      v.pop_back();
      break;
    }
  }
  if (v.empty()) R().weak_refs.erase(it);
}
bool Deallocating(id obj) { return HeaderOf(obj)->retain_count.load(std::memory_order_acquire) == 0; }
}  // namespace

OBJC_EMU_EXPORT id objc_storeWeak(id* location, id value) {
  if (value != nullptr && (IsBlockClass(value->isa) || IsUncounted(value))) {
    // Classes, constant strings and global blocks never go away.
    std::lock_guard<std::mutex> lock(R().weak_mu);
    id old = *location;
    if (old != nullptr && !IsBlockClass(old->isa) && !IsUncounted(old)) UnregisterWeakLocked(location, old);
    *location = value;
    return value;
  }
  std::lock_guard<std::mutex> lock(R().weak_mu);
  id old = *location;
  if (old != nullptr && !IsBlockClass(old->isa) && !IsUncounted(old)) UnregisterWeakLocked(location, old);
  if (value != nullptr && Deallocating(value)) value = nullptr;
  if (value != nullptr) {
    R().weak_refs[value].push_back(location);
    HeaderOf(value)->weakly_referenced.store(1, std::memory_order_release);
  }
  *location = value;
  return value;
}

OBJC_EMU_EXPORT id objc_initWeak(id* location, id value) {
  *location = nullptr;
  return value ? objc_storeWeak(location, value) : nullptr;
}

OBJC_EMU_EXPORT void objc_destroyWeak(id* location) {
  if (*location != nullptr) objc_storeWeak(location, nullptr);
}

OBJC_EMU_EXPORT id objc_loadWeakRetained(id* location) {
  std::lock_guard<std::mutex> lock(R().weak_mu);
  id obj = *location;
  if (obj == nullptr) return nullptr;
  if (IsBlockClass(obj->isa) || IsUncounted(obj)) return obj;
  std::atomic<uintptr_t>& rc = HeaderOf(obj)->retain_count;
  uintptr_t c = rc.load(std::memory_order_relaxed);
  do {
    if (c == 0) return nullptr;  // being deallocated: as good as nil
  } while (!rc.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel));
  return obj;
}

OBJC_EMU_EXPORT id objc_loadWeak(id* location) {
  return objc_autorelease(objc_loadWeakRetained(location));
}

OBJC_EMU_EXPORT void objc_copyWeak(id* to, id* from) {
  id obj = objc_loadWeakRetained(from);
  objc_initWeak(to, obj);
  objc_release(obj);
}

OBJC_EMU_EXPORT void objc_moveWeak(id* to, id* from) {
  objc_copyWeak(to, from);
  objc_destroyWeak(from);
}

// --- properties: atomic accessors take a lock striped by the ivar's address.
OBJC_EMU_EXPORT id objc_getProperty(id self, SEL, ptrdiff_t offset, bool atomic) {
  id* slot = reinterpret_cast<id*>(reinterpret_cast<char*>(self) + offset);
  if (!atomic) return *slot;
  id value;
  {
    std::lock_guard<std::mutex> lock(PropertyLock(slot));
    value = objc_retain(*slot);
  }
  return objc_autorelease(value);
}

namespace {
void SetProperty(id self, id value, ptrdiff_t offset, bool atomic, bool copy) {
  id* slot = reinterpret_cast<id*>(reinterpret_cast<char*>(self) + offset);
  id new_value = value == nullptr ? nullptr
                 : copy           ? Send<id>(value, Sel("copy"))
                                  : objc_retain(value);
  id old;
  if (atomic) {
    std::lock_guard<std::mutex> lock(PropertyLock(slot));
    old = *slot;
    *slot = new_value;
  } else {
    old = *slot;
    *slot = new_value;
  }
  objc_release(old);
}
}  // namespace

OBJC_EMU_EXPORT void objc_setProperty_atomic(id self, SEL, id value, ptrdiff_t offset) {
  SetProperty(self, value, offset, true, false);
}
OBJC_EMU_EXPORT void objc_setProperty_nonatomic(id self, SEL, id value, ptrdiff_t offset) {
  SetProperty(self, value, offset, false, false);
}
OBJC_EMU_EXPORT void objc_setProperty_atomic_copy(id self, SEL, id value, ptrdiff_t offset) {
  SetProperty(self, value, offset, true, true);
}
OBJC_EMU_EXPORT void objc_setProperty_nonatomic_copy(id self, SEL, id value, ptrdiff_t offset) {
  SetProperty(self, value, offset, false, true);
}
OBJC_EMU_EXPORT void objc_setProperty(id self, SEL, ptrdiff_t offset, id value, bool atomic,
                                      signed char should_copy) {
  SetProperty(self, value, offset, atomic, should_copy != 0);
}

OBJC_EMU_EXPORT void objc_copyStruct(void* dest, const void* src, ptrdiff_t size, bool atomic,
                                     bool) {
  if (!atomic) {
    std::memmove(dest, src, static_cast<size_t>(size));
    return;
  }
  std::mutex& a = PropertyLock(src);
  std::mutex& b = PropertyLock(dest);
  if (&a == &b) {
    std::lock_guard<std::mutex> lock(a);
    std::memmove(dest, src, static_cast<size_t>(size));
  } else {
    std::mutex* first = &a < &b ? &a : &b;
    std::mutex* second = &a < &b ? &b : &a;
    std::lock_guard<std::mutex> l1(*first);
    std::lock_guard<std::mutex> l2(*second);
    std::memmove(dest, src, static_cast<size_t>(size));
  }
}

// --- @synchronized: one recursive mutex per object, made on first use.
OBJC_EMU_EXPORT int objc_sync_enter(id obj) {
  if (obj == nullptr) return 0;  // @synchronized(nil) does nothing, as Apple documents
  std::recursive_mutex* m;
  {
    std::lock_guard<std::mutex> lock(R().sync_mu);
    auto& slot = R().sync_locks[obj];
    if (slot == nullptr) slot = new std::recursive_mutex();
    m = slot;
  }
  m->lock();
  return 0;
}

OBJC_EMU_EXPORT int objc_sync_exit(id obj) {
  if (obj == nullptr) return 0;
  std::recursive_mutex* m;
  {
    std::lock_guard<std::mutex> lock(R().sync_mu);
    auto it = R().sync_locks.find(obj);
    if (it == R().sync_locks.end()) return -1;  // OBJC_SYNC_NOT_OWNING_THREAD_ERROR
    m = it->second;
  }
  m->unlock();
  return 0;
}

OBJC_EMU_EXPORT void objc_enumerationMutation(id obj) {
  Fatal("collection %p (%s) was mutated while being enumerated", static_cast<void*>(obj),
        obj ? obj->isa->ro->name : "nil");
}

}  // extern "C"
