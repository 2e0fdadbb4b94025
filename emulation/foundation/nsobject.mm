// The root class of the emulation's Foundation (Linux only; see ../fakes.cmake).
//
// Built WITHOUT ARC (-fno-objc-arc): the root class is where reference counting itself
// lives, and ARC forbids implementing -retain/-release/-dealloc's teardown. The counts
// are the runtime's (a header in front of each object, ../runtime/objc_emu.h):
// objc_retain/objc_release work on it without a message, and the runtime sends -dealloc
// when the count reaches zero. Everything else in the fakes is built with ARC.
//
// Behaviour follows Apple's NSObject documentation: +alloc returns a zero-filled
// instance with a +1 count, -init returns self, -copy is -copyWithZone:, -isEqual: is
// identity and -hash the address (so equal objects have equal hashes).
#import <Foundation/Foundation.h>

#include <cstdio>

#include "emulation/runtime/objc_emu.h"

// ARC's entry points, declared here because this file is compiled without ARC (their
// names and signatures are the ones clang emits calls to).
extern "C" id objc_retain(id obj);
extern "C" void objc_release(id obj);
extern "C" id objc_autorelease(id obj);

@implementation NSObject

// Apple: "The runtime sends initialize to each class in a program just before the class,
// or any class that inherits from it, is sent its first message". Nothing to do here.
+ (void)initialize {
}

+ (instancetype)allocWithZone:(NSZone*)zone {
  (void)zone;  // zones are ignored on Apple's platforms too
  return class_createInstance(self, 0);
}

+ (instancetype)alloc {
  return [self allocWithZone:nullptr];
}

+ (instancetype)new {
  return [[self alloc] init];
}

- (instancetype)init {
  return self;
}

// Sent by the runtime when the retain count reaches zero: object_dispose clears weak
// references, runs the C++ ivar destructors (.cxx_destruct, which releases ARC ivars
// of subclasses) and frees the memory.
- (void)dealloc {
  object_dispose(self);
}

- (id)copy {
  return [(id<NSCopying>)self copyWithZone:nullptr];
}

+ (Class)class {
  return self;
}

- (Class)class {
  return object_getClass(self);
}

- (instancetype)self {
  return self;
}

- (BOOL)isKindOfClass:(Class)aClass {
  for (Class c = object_getClass(self); c != nullptr; c = class_getSuperclass(c)) {
    if (c == aClass) return YES;
  }
  return NO;
}

- (BOOL)isMemberOfClass:(Class)aClass {
  return object_getClass(self) == aClass;
}

- (BOOL)respondsToSelector:(SEL)aSelector {
  return aSelector != nullptr && class_respondsToSelector(object_getClass(self), aSelector);
}

- (BOOL)isEqual:(id)object {
  return self == object;
}

- (NSUInteger)hash {
  return reinterpret_cast<NSUInteger>(self);
}

// Apple's format: "<ClassName: 0x...>".
- (NSString*)description {
  char text[256];
  std::snprintf(text, sizeof(text), "<%s: %p>", object_getClassName(self), static_cast<void*>(self));
  return [NSString stringWithUTF8String:text];
}

// Manual reference counting for code built without ARC (this file, tests): the same
// counts ARC's entry points use.
- (instancetype)retain {
  return objc_retain(self);
}

- (oneway void)release {
  objc_release(self);
}

- (instancetype)autorelease {
  return objc_autorelease(self);
}

- (NSUInteger)retainCount {
  return static_cast<NSUInteger>(objc_emu_retain_count(self));
}

@end
