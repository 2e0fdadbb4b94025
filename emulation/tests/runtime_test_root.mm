// Manual reference counting (-fno-objc-arc): a root class implements allocation and
// deallocation itself, as Foundation's NSObject does.
#import "emulation/tests/runtime_test_root.h"

#include <atomic>

extern "C" id objc_retain(id);

namespace {
std::atomic<int> g_destroyed{0};
struct DestroyCounter {
  ~DestroyCounter() { ++g_destroyed; }
};
}  // namespace

@implementation TRoot
+ (instancetype)alloc { return class_createInstance(self, 0); }
+ (instancetype)allocWithZone:(void*)zone { return class_createInstance(self, 0); }
+ (instancetype)new { return [[self alloc] init]; }
+ (Class)class { return self; }
- (instancetype)init { return self; }
- (void)dealloc { object_dispose(self); }
- (id)copy { return objc_retain(self); }
- (Class)class { return object_getClass(self); }
- (bool)respondsToSelector:(SEL)sel { return class_respondsToSelector(object_getClass(self), sel); }
- (int)libraryMethod { return 1; }
@end

@interface TLibThing () {
  DestroyCounter counter_;
}
@end

@implementation TLibThing
+ (int)destroyed { return g_destroyed.load(); }
- (instancetype)init {
  text = "made in the library";
  return self;
}
- (int)value { return 7; }
@end
