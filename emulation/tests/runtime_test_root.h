// Classes for the runtime's own tests (runtime_test.mm), defined in a library of their
// own (runtime_test_root.mm, manual reference counting) so that the tests cross a
// library boundary: selectors, categories and subclasses from another image.
#ifndef TFMPS_EMULATION_TESTS_RUNTIME_TEST_ROOT_H_
#define TFMPS_EMULATION_TESTS_RUNTIME_TEST_ROOT_H_

#include <string>

#include "emulation/runtime/objc_emu.h"

#define nil nullptr

// A root class with Apple's root layout (`Class isa;`), NSObject's basic methods, and
// nothing else: the runtime tests do not depend on the Foundation fake.
__attribute__((objc_root_class))
@interface TRoot {
  Class isa;
}
+ (instancetype)alloc;
+ (instancetype)allocWithZone:(void*)zone;
+ (instancetype)new;
+ (Class)class;
- (instancetype)init;
- (void)dealloc;
- (id)copy;
- (Class)class;
- (bool)respondsToSelector:(SEL)sel;
- (int)libraryMethod;  // overridden by a category in runtime_test.mm
@end

// C++ ivars (constructed and destroyed by .cxx_construct / .cxx_destruct) and a counter
// of destructions, across the library boundary.
@interface TLibThing : TRoot {
 @public
  std::string text;
}
+ (int)destroyed;
- (int)value;
@end

#endif  // TFMPS_EMULATION_TESTS_RUNTIME_TEST_ROOT_H_
