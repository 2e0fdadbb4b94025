// The emulation's Objective-C runtime: the public C API beyond the entry points that
// clang's Apple-ABI code calls (objc_msgSend, ARC, weak, properties, ...; see
// ../../../shared/METAL_EMULATION.md and docs/metal-emulation.md).
//
// Linux only, for tests and the simulated device: macOS uses Apple's libobjc. Names that
// exist in Apple's <objc/runtime.h> keep Apple's name and meaning; objc_emu_* are this
// emulation's own (leak counts, image registration).
#ifndef TFMPS_EMULATION_RUNTIME_OBJC_EMU_H_
#define TFMPS_EMULATION_RUNTIME_OBJC_EMU_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __OBJC__
typedef id objc_emu_id;
typedef Class objc_emu_class;
typedef SEL objc_emu_sel;
#else
typedef void* objc_emu_id;
typedef void* objc_emu_class;
typedef const void* objc_emu_sel;
#endif
typedef void (*objc_emu_imp)(void);

#ifdef __cplusplus
extern "C" {
#endif

// --- Apple's runtime API, the subset the fakes and tests use.
// A zero-filled instance of cls (plus extraBytes) with +1 retain count, C++ ivars
// constructed (.cxx_construct, root class first); counted as live until object_dispose.
objc_emu_id class_createInstance(objc_emu_class cls, size_t extraBytes);
// Clears weak references to obj, destroys C++ ivars (.cxx_destruct, leaf class first)
// and frees it. NSObject's -dealloc calls it.
objc_emu_id object_dispose(objc_emu_id obj);
objc_emu_class object_getClass(objc_emu_id obj);
const char* object_getClassName(objc_emu_id obj);
const char* class_getName(objc_emu_class cls);
objc_emu_class class_getSuperclass(objc_emu_class cls);
size_t class_getInstanceSize(objc_emu_class cls);
int class_isMetaClass(objc_emu_class cls);
int class_respondsToSelector(objc_emu_class cls, objc_emu_sel sel);
objc_emu_imp class_getMethodImplementation(objc_emu_class cls, objc_emu_sel sel);
objc_emu_class objc_getClass(const char* name);    // nullptr if unknown
objc_emu_class objc_lookUpClass(const char* name);  // same
objc_emu_sel sel_registerName(const char* name);
const char* sel_getName(objc_emu_sel sel);

// --- The emulation's own.
// Instances made by class_createInstance and not yet disposed: all of them, or those
// whose class is exactly `class_name`.
int64_t objc_emu_live_objects(void);
int64_t objc_emu_live_instances(const char* class_name);
// Writes one line per live instance's class ("ClassName count") to stderr; for leak
// reports in tests.
void objc_emu_dump_live(void);
// The retain count of a heap instance (1 after class_createInstance); 0 for objects the
// runtime does not count (classes, constant strings, blocks).
uintptr_t objc_emu_retain_count(objc_emu_id obj);

// One loaded library's (or executable's) Objective-C metadata: the ranges of its
// objc_classlist, objc_catlist and objc_selrefs sections. image_register.c, linked into
// every library with Objective-C code, passes them from a constructor.
struct objc_emu_image {
  void** classlist_begin; void** classlist_end;
  void** catlist_begin; void** catlist_end;
  void** selrefs_begin; void** selrefs_end;
  const char* name;
};
void objc_emu_register_image(const struct objc_emu_image* image);

#ifdef __cplusplus
}
#endif

#endif  // TFMPS_EMULATION_RUNTIME_OBJC_EMU_H_
