/* Linked into every library (and executable) that holds Objective-C code compiled for
 * the emulation: hands this image's metadata sections to the runtime before any of its
 * C++ static initializers run (constructor priority 101). The linker defines
 * __start_/__stop_ symbols for sections whose names are C identifiers; hidden, so each
 * library sees its own sections, and weak, so a library without categories still links. */
#include "emulation/runtime/objc_emu.h"

#define SECTION_RANGE(name)                                                      \
  extern void* __start_##name[] __attribute__((weak, visibility("hidden")));     \
  extern void* __stop_##name[] __attribute__((weak, visibility("hidden")));

SECTION_RANGE(objc_classlist)
SECTION_RANGE(objc_catlist)
SECTION_RANGE(objc_selrefs)

__attribute__((constructor(101), used)) static void tfmps_objc_register_image(void) {
  struct objc_emu_image image = {
      __start_objc_classlist, __stop_objc_classlist, __start_objc_catlist,
      __stop_objc_catlist,    __start_objc_selrefs,  __stop_objc_selrefs,
      __FILE__};
  objc_emu_register_image(&image);
}
