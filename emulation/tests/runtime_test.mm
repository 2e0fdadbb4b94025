// Tests of the emulation's Objective-C runtime (runtime/objc_runtime.cc,
// msgsend_x86_64.S), compiled with ARC exactly as the project's .mm files are.
#import "emulation/tests/runtime_test_root.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

struct Big {
  double a, b, c, d, e;
  long f;
};
struct Pair {
  float x, y;
};

static std::atomic<int> g_initialized{0};

@interface TThing : TRoot {
 @public
  int ivar;
}
@property(atomic, strong) TThing* strongRef;
@property(atomic, copy) TThing* copied;
@property(nonatomic, weak) TThing* weakRef;
@property(atomic) Big atomicBig;
@property(nonatomic) Pair pair;
- (double)mixInt:(int)a double:(double)b long:(long)c float:(float)d int:(int)e
          double:(double)f int:(int)g double:(double)h int:(int)i double:(double)j
             int:(int)k double:(double)l double:(double)m double:(double)n double:(double)o;
- (Big)bigFrom:(double)x;
- (Pair)pairFrom:(float)x;
- (int)callBlock:(int (^)(int))block with:(int)x;
@end

@implementation TThing
+ (void)initialize { ++g_initialized; }
- (id)copy {
  TThing* c = [TThing new];
  c->ivar = ivar + 1;
  return c;
}
- (double)mixInt:(int)a double:(double)b long:(long)c float:(float)d int:(int)e
          double:(double)f int:(int)g double:(double)h int:(int)i double:(double)j
             int:(int)k double:(double)l double:(double)m double:(double)n double:(double)o {
  return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h + 9 * i + 10 * j + 11 * k +
         12 * l + 13 * m + 14 * n + 15 * o;
}
- (Big)bigFrom:(double)x { return Big{x, x + 1, x + 2, x + 3, x + 4, static_cast<long>(x) * 10}; }
- (Pair)pairFrom:(float)x { return Pair{x, -x}; }
- (int)callBlock:(int (^)(int))block with:(int)x { return block(x); }
@end

@interface TSub : TThing
@end
@implementation TSub
- (Big)bigFrom:(double)x {
  Big b = [super bigFrom:x];
  b.f = -1;
  return b;
}
- (Pair)pairFrom:(float)x {
  Pair p = [super pairFrom:x];
  p.y = 100;
  return p;
}
@end

// Categories on classes of another library, one replacing a method defined there.
@interface TRoot (TestCategory)
- (int)fromCategory;
@end
@implementation TRoot (TestCategory)
- (int)fromCategory { return 42; }
- (int)libraryMethod { return 2; }
@end

@interface TLibThing (TestCategory)
+ (int)classFromCategory;
@end
@implementation TLibThing (TestCategory)
+ (int)classFromCategory { return 9; }
@end

static std::vector<const char*> g_init_classes;
@interface TInit : TRoot
@end
@implementation TInit
+ (void)initialize { g_init_classes.push_back(class_getName(self)); }
@end
@interface TInitSub : TInit
@end
@implementation TInitSub
@end

@interface TUnknown : TRoot
- (void)notImplemented;
+ (void)notImplementedEither;
@end
@implementation TUnknown
@end

namespace {

class RuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override { live_before_ = objc_emu_live_objects(); }
  void TearDown() override {
    EXPECT_EQ(objc_emu_live_objects(), live_before_) << "objects leaked by the test";
  }
  int64_t live_before_ = 0;
};

TEST_F(RuntimeTest, DispatchesManyMixedArguments) {
  @autoreleasepool {
    TThing* t = [TThing new];
    // 6 integer registers and 8 vector registers, the rest on the stack.
    double got = [t mixInt:1 double:2 long:3 float:4 int:5 double:6 int:7 double:8 int:9
                    double:10 int:11 double:12 double:13 double:14 double:15];
    double want = 0;
    for (int i = 1; i <= 15; ++i) want += i * i;
    EXPECT_EQ(got, want);
  }
}

TEST_F(RuntimeTest, ReturnsStructsInMemoryAndInRegisters) {
  @autoreleasepool {
    TThing* t = [TThing new];
    Big b = [t bigFrom:1.5];
    EXPECT_EQ(b.a, 1.5);
    EXPECT_EQ(b.e, 5.5);
    EXPECT_EQ(b.f, 10);
    Pair p = [t pairFrom:2.5f];
    EXPECT_EQ(p.x, 2.5f);
    EXPECT_EQ(p.y, -2.5f);
  }
}

TEST_F(RuntimeTest, SuperSendsStartAtTheSuperclass) {
  @autoreleasepool {
    TSub* s = [TSub new];
    Big b = [s bigFrom:3];
    EXPECT_EQ(b.a, 3);
    EXPECT_EQ(b.f, -1);
    Pair p = [s pairFrom:1];
    EXPECT_EQ(p.x, 1);
    EXPECT_EQ(p.y, 100);
  }
}

TEST_F(RuntimeTest, MessagesToNilReturnZero) {
  TThing* t = nil;
  EXPECT_EQ([t mixInt:1 double:2 long:3 float:4 int:5 double:6 int:7 double:8 int:9
                double:10 int:11 double:12 double:13 double:14 double:15], 0.0);
  Pair p = [t pairFrom:3];
  EXPECT_EQ(p.x, 0.0f);
  EXPECT_EQ(p.y, 0.0f);
  EXPECT_EQ([t callBlock:^(int x) { return x; } with:3], 0);
  EXPECT_EQ(t.strongRef, nil);
}

TEST_F(RuntimeTest, InitializeRunsOncePerClassBeforeTheFirstMessage) {
  @autoreleasepool {
    EXPECT_EQ(g_init_classes.size(), 0u);
    TInitSub* a = [TInitSub new];
    // Superclass first; TInitSub inherits +initialize, so it runs again for TInitSub.
    ASSERT_EQ(g_init_classes.size(), 2u);
    EXPECT_STREQ(g_init_classes[0], "TInit");
    EXPECT_STREQ(g_init_classes[1], "TInitSub");
    TInitSub* b = [TInitSub new];
    TInit* c = [TInit new];
    EXPECT_EQ(g_init_classes.size(), 2u);
    (void)a, (void)b, (void)c;
  }
}

TEST_F(RuntimeTest, CategoriesAcrossLibrariesAddAndReplaceMethods) {
  @autoreleasepool {
    TLibThing* l = [TLibThing new];
    EXPECT_EQ([l fromCategory], 42);
    EXPECT_EQ([l libraryMethod], 2);  // the category's, not the library's
    EXPECT_EQ([TLibThing classFromCategory], 9);
    EXPECT_EQ([l value], 7);
    EXPECT_TRUE([l respondsToSelector:@selector(fromCategory)]);
    EXPECT_FALSE([l respondsToSelector:@selector(callBlock:with:)]);
  }
}

TEST_F(RuntimeTest, CxxIvarsAreConstructedAndDestroyed) {
  const int destroyed = [TLibThing destroyed];
  @autoreleasepool {
    TLibThing* l = [TLibThing new];
    EXPECT_EQ(l->text, "made in the library");
    EXPECT_EQ(objc_emu_live_instances("TLibThing"), 1);
  }
  EXPECT_EQ([TLibThing destroyed], destroyed + 1);
  EXPECT_EQ(objc_emu_live_instances("TLibThing"), 0);
}

TEST_F(RuntimeTest, StrongAndCopyPropertiesRetainAndCopy) {
  @autoreleasepool {
    TThing* a = [TThing new];
    TThing* b = [TThing new];
    b->ivar = 5;
    a.strongRef = b;
    EXPECT_EQ(objc_emu_retain_count(b), 2u);
    @autoreleasepool {
      EXPECT_EQ(a.strongRef, b);  // an atomic getter retains and autoreleases
    }
    EXPECT_EQ(objc_emu_retain_count(b), 2u);
    a.copied = b;
    EXPECT_NE(a.copied, b);
    EXPECT_EQ(a.copied->ivar, 6);
    a.strongRef = nil;
    EXPECT_EQ(objc_emu_retain_count(b), 1u);
    Big big{1, 2, 3, 4, 5, 6};
    a.atomicBig = big;
    EXPECT_EQ(a.atomicBig.f, 6);
    a.pair = Pair{1, 2};
    EXPECT_EQ(a.pair.y, 2);
  }
}

TEST_F(RuntimeTest, WeakReferencesAreZeroedOnDealloc) {
  __weak TThing* w;
  @autoreleasepool {
    TThing* t = [TThing new];
    TThing* holder = [TThing new];
    __weak TThing* copy;
    w = t;
    // Reading a weak reference (and a weak property's getter) may autorelease the
    // object: the inner pool lets it go before t's last strong reference does.
    @autoreleasepool {
      EXPECT_EQ(w, t);
      copy = w;
      EXPECT_EQ(copy, t);
      holder.weakRef = t;
      EXPECT_EQ(holder.weakRef, t);
    }
    t = nil;
    EXPECT_EQ(copy, nil);
    EXPECT_EQ(holder.weakRef, nil);
  }
  EXPECT_EQ(w, nil);
}

TEST_F(RuntimeTest, AutoreleasePoolsNestAndDrain) {
  __weak TThing* w;
  @autoreleasepool {
    @autoreleasepool {
      TThing* t = [TThing new];
      w = t;
      TThing* autoreleased = w;  // loading a weak reference goes through a pool
      (void)autoreleased;
    }
    EXPECT_EQ(w, nil);
  }
}

TEST_F(RuntimeTest, BlocksCaptureStrongWeakAndByrefVariables) {
  @autoreleasepool {
    TThing* t = [TThing new];
    t->ivar = 3;
    __weak TThing* w = t;
    __block int counter = 0;
    int (^block)(int) = ^(int x) {
      ++counter;
      return x + t->ivar + (w != nil ? 100 : 0);
    };
    EXPECT_EQ([t callBlock:block with:1], 104);
    EXPECT_EQ(counter, 1);
    // A heap copy outlives the scope that made it and keeps t alive.
    int (^heap)(int) = [block copy];
    block = nil;
    EXPECT_GE(objc_emu_retain_count(t), 2u);
    EXPECT_EQ(heap(0), 103);
    heap = nil;
    EXPECT_EQ(counter, 2);
  }
}

TEST_F(RuntimeTest, SynchronizedIsRecursiveAndExclusive) {
  @autoreleasepool {
    TThing* t = [TThing new];
    long counter = 0;
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i) {
      threads.emplace_back([&] {
        for (int k = 0; k < 5000; ++k) {
          @synchronized(t) {
            @synchronized(t) { ++counter; }
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(counter, 8 * 5000);
    @synchronized(nil) { ++counter; }  // does nothing, as Apple documents
  }
}

TEST_F(RuntimeTest, RetainReleaseAndWeakUnderEightThreads) {
  std::vector<std::thread> threads;
  std::atomic<long> loaded_nil{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < 20000; ++k) {
        @autoreleasepool {
          TThing* a = [TThing new];
          __weak TThing* w = a;
          TThing* strong = w;
          a.strongRef = [TThing new];
          strong.copied = a.strongRef;
          a = nil;
          strong = nil;
          if (w == nil) ++loaded_nil;
        }
      }
    });
  }
  // Meanwhile, one shared object whose weak references race with its release.
  for (int k = 0; k < 2000; ++k) {
    TThing* shared = [TThing new];
    __weak TThing* ws = shared;
    std::thread reader([&] {
      for (int j = 0; j < 50; ++j) {
        TThing* s = ws;
        if (s != nil) EXPECT_EQ(object_getClass(s), [TThing class]);
      }
    });
    shared = nil;
    reader.join();
    EXPECT_EQ(ws, nil);
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(loaded_nil.load(), 8 * 20000);
}

TEST_F(RuntimeTest, SelectorsAreUniqueAcrossLibraries) {
  SEL here = @selector(libraryMethod);
  EXPECT_EQ(sel_registerName("libraryMethod"), here);
  EXPECT_STREQ(sel_getName(here), "libraryMethod");
  EXPECT_EQ(objc_getClass("TLibThing"), [TLibThing class]);
  EXPECT_EQ(objc_getClass("NoSuchClass"), nullptr);
  EXPECT_EQ(class_getSuperclass([TLibThing class]), [TRoot class]);
}

using RuntimeDeathTest = RuntimeTest;

TEST_F(RuntimeDeathTest, UnrecognizedSelectorAbortsNamingClassAndSelector) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        TUnknown* u = [TUnknown new];
        [u notImplemented];
      },
      "-\\[TUnknown notImplemented\\]: unrecognized selector sent to instance");
  EXPECT_DEATH([TUnknown notImplementedEither],
               "\\+\\[TUnknown notImplementedEither\\]: unrecognized selector sent to class");
}

}  // namespace
