// Tests of the emulation's CPU fakes of Foundation, Metal and MPS (../foundation,
// ../metal, ../mps): that they behave as Apple documents, that the misuse Metal's
// validation layer rejects aborts here too (death tests), and that nothing leaks: every
// test ends with no live Objective-C object (the runtime's count).
//
// Expected values come from Apple's documentation (formulas of MPSNNOptimizers.h,
// layouts of MPSImage.h), computed here in double, independently of the CPU backend
// that the fakes call.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "emulation/metal/metal_emu.h"
#include "emulation/runtime/objc_emu.h"

extern "C" void* objc_autoreleasePoolPush(void);
extern "C" void objc_autoreleasePoolPop(void* pool);

namespace {

// Every test runs in an autorelease pool and must leave no live object behind.
class Fakes : public ::testing::Test {
 protected:
  void SetUp() override {
    // Death tests re-run the binary for the one test: the process has worker threads.
    // (Set here, after gtest's own flag initialization.)
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EmuResetHooks();
    pool_ = objc_autoreleasePoolPush();
  }
  void TearDown() override {
    objc_autoreleasePoolPop(pool_);
    EmuResetHooks();
    if (objc_emu_live_objects() != 0) objc_emu_dump_live();
    EXPECT_EQ(objc_emu_live_objects(), 0);
  }
  void* pool_ = nullptr;
};

id<MTLBuffer> FloatBuffer(id<MTLDevice> device, const std::vector<float>& v) {
  return [device newBufferWithBytes:v.data() length:v.size() * sizeof(float) options:MTLResourceStorageModeShared];
}

std::vector<float> Floats(id<MTLBuffer> b, size_t offset_bytes, size_t n) {
  const float* p = reinterpret_cast<const float*>(static_cast<const char*>([b contents]) + offset_bytes);
  return std::vector<float>(p, p + n);
}

MPSVector* Vec(id<MTLBuffer> b, NSUInteger offset, NSUInteger n, MPSDataType t = MPSDataTypeFloat32) {
  return [[MPSVector alloc] initWithBuffer:b
                                    offset:offset
                                descriptor:[MPSVectorDescriptor vectorDescriptorWithLength:n dataType:t]];
}

MPSNNOptimizerDescriptor* Desc(float lr) {
  return [MPSNNOptimizerDescriptor optimizerDescriptorWithLearningRate:lr
                                                       gradientRescale:1.0f
                                                 applyGradientClipping:NO
                                                       gradientClipMax:0.0f
                                                       gradientClipMin:0.0f
                                                    regularizationType:MPSNNRegularizationTypeNone
                                                   regularizationScale:0.0f];
}

void CommitAndWait(id<MTLCommandBuffer> cb) {
  [cb commit];
  [cb waitUntilCompleted];
  ASSERT_EQ([cb status], MTLCommandBufferStatusCompleted);
}

// ======================================================================= Foundation
TEST_F(Fakes, ConstantAndHeapStrings) {
  NSString* a = @"tf-mps";
  EXPECT_STREQ([a UTF8String], "tf-mps");
  EXPECT_EQ([a length], 6u);
  NSString* b = [NSString stringWithUTF8String:"tf-mps"];
  EXPECT_NE(a, b);
  EXPECT_TRUE([a isEqual:b]);
  EXPECT_TRUE([b isEqualToString:a]);
  EXPECT_EQ([a hash], [b hash]);
  EXPECT_TRUE([a isKindOfClass:[NSString class]]);
  EXPECT_EQ(objc_emu_retain_count(a), 0u);  // literals are not counted
  // A non-ASCII literal is stored as UTF-16 by clang; length counts UTF-16 units.
  NSString* u = @"gr\u00fc\u00dfe \U0001F600";
  EXPECT_STREQ([u UTF8String], "gr\xc3\xbc\xc3\x9f" "e \xf0\x9f\x98\x80");
  EXPECT_EQ([u length], 8u);
  EXPECT_EQ([[NSString stringWithUTF8String:[u UTF8String]] length], 8u);
  NSString* c = [[NSString alloc] initWithUTF8String:"abc"];  // the cluster's placeholder path
  EXPECT_TRUE([c isEqualToString:@"abc"]);
  EXPECT_EQ([c copy], c);  // immutable: a copy is the object itself
  EXPECT_DEATH({ (void)[NSString stringWithUTF8String:nullptr]; }, "NULL cString");
}

TEST_F(Fakes, ObjectBasics) {
  NSObject* o = [[NSObject alloc] init];
  EXPECT_EQ(objc_emu_live_instances("NSObject"), 1);
  EXPECT_TRUE([o isKindOfClass:[NSObject class]]);
  EXPECT_TRUE([o isMemberOfClass:[NSObject class]]);
  EXPECT_FALSE([o isKindOfClass:[NSString class]]);
  EXPECT_TRUE([o respondsToSelector:@selector(description)]);
  EXPECT_FALSE([o respondsToSelector:@selector(UTF8String)]);
  EXPECT_TRUE([o isEqual:o]);
  EXPECT_EQ([o self], o);
  EXPECT_EQ(std::string([[o description] UTF8String]).rfind("<NSObject: 0x", 0), 0u);
  NSObject* n = [NSObject new];
  EXPECT_FALSE([o isEqual:n]);
}

TEST_F(Fakes, ArraysDictionariesErrors) {
  NSArray* a = @[ @"x", @"y", @"z" ];
  EXPECT_EQ([a count], 3u);
  EXPECT_STREQ([a[1] UTF8String], "y");
  EXPECT_STREQ([[a firstObject] UTF8String], "x");
  std::string joined;
  for (NSString* s in a) joined += [s UTF8String];
  EXPECT_EQ(joined, "xyz");
  EXPECT_EQ([[NSArray arrayWithObjects:nullptr count:0] firstObject], nil);

  NSDictionary* d = @{@"k" : @"v", NSLocalizedDescriptionKey : @"it broke"};
  EXPECT_EQ([d count], 2u);
  EXPECT_STREQ([d[@"k"] UTF8String], "v");
  EXPECT_EQ(d[@"missing"], nil);

  NSError* e = [NSError errorWithDomain:@"TestDomain" code:7 userInfo:d];
  EXPECT_STREQ([[e localizedDescription] UTF8String], "it broke");
  EXPECT_EQ([e code], 7);
  EXPECT_STREQ([[e domain] UTF8String], "TestDomain");
  NSError* bare = [NSError errorWithDomain:@"TestDomain" code:3 userInfo:nil];
  EXPECT_STREQ([[bare localizedDescription] UTF8String],
               "The operation couldn\u2019t be completed. (TestDomain error 3.)");
}

TEST_F(Fakes, ArrayIndexOutOfRangeAborts) {
  EXPECT_DEATH(
      {
        NSArray* a = @[ @"x" ];
        (void)[a objectAtIndex:1];
      },
      "NSRangeException.*index 1 beyond bounds \\[0 \\.\\. 0\\]");
}

// ============================================================================ Metal
TEST_F(Fakes, DeviceIsOneObjectAndListed) {
  id<MTLDevice> d1 = MTLCreateSystemDefaultDevice();
  id<MTLDevice> d2 = MTLCreateSystemDefaultDevice();
  ASSERT_NE(d1, nil);
  EXPECT_EQ(d1, d2);
  NSArray<id<MTLDevice>>* all = MTLCopyAllDevices();
  ASSERT_EQ([all count], 1u);
  EXPECT_EQ(all[0], d1);
  EXPECT_TRUE([d1 hasUnifiedMemory]);
  EXPECT_TRUE(MPSSupportsMTLDevice(d1));
  EXPECT_FALSE(MPSSupportsMTLDevice(nil));
  EXPECT_GT([[d1 name] length], 0u);
}

TEST_F(Fakes, BuffersAreZeroFilledAsDocumented) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  id<MTLBuffer> b = [device newBufferWithLength:4096 options:MTLResourceStorageModeShared];
  ASSERT_NE(b, nil);
  EXPECT_EQ([b length], 4096u);
  EXPECT_EQ([b storageMode], MTLStorageModeShared);
  EXPECT_EQ(reinterpret_cast<uintptr_t>([b contents]) % 16, 0u);
  const auto* p = static_cast<const unsigned char*>([b contents]);
  if (EmuDebugLevel() < 2) {  // level 2 deliberately breaks Apple's zero-fill
    for (int i = 0; i < 4096; ++i) ASSERT_EQ(p[i], 0) << i;
  }
  id<MTLBuffer> priv = [device newBufferWithLength:64 options:MTLResourceStorageModePrivate];
  EXPECT_EQ([priv storageMode], MTLStorageModePrivate);
  EXPECT_EQ([priv contents], nullptr);  // the CPU cannot address private storage
  const float x[2] = {1.5f, -2.0f};
  id<MTLBuffer> c = [device newBufferWithBytes:x length:sizeof(x) options:MTLResourceStorageModeShared];
  EXPECT_EQ(Floats(c, 0, 2), std::vector<float>({1.5f, -2.0f}));
}

TEST_F(Fakes, StatusHandlersAndWorkRunOnTheWorkerInOrder) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  id<MTLCommandQueue> queue = [device newCommandQueue];
  id<MTLCommandBuffer> cb = [queue commandBuffer];
  EXPECT_EQ([cb status], MTLCommandBufferStatusNotEnqueued);
  EXPECT_EQ([cb commandQueue], queue);
  std::mutex mu;
  std::vector<std::string> events;
  const std::thread::id main_thread = std::this_thread::get_id();
  auto note = [&](const std::string& e) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(e);
  };
  __block bool on_worker = true;
  [cb addScheduledHandler:^(id<MTLCommandBuffer> b) {
    note("scheduled");
    if (std::this_thread::get_id() == main_thread) on_worker = false;
  }];
  EmuEncode(cb, "first", [&] { note("work 1"); });
  EmuEncode(cb, "second", [&] { note("work 2"); });
  [cb addCompletedHandler:^(id<MTLCommandBuffer> b) {
    note("completed 1");
    EXPECT_EQ([b status], MTLCommandBufferStatusCompleted);
    if (std::this_thread::get_id() == main_thread) on_worker = false;
  }];
  [cb addCompletedHandler:^(id<MTLCommandBuffer> b) { note("completed 2"); }];
  EXPECT_TRUE(events.empty());  // nothing runs at encode time
  [cb commit];
  EXPECT_GE([cb status], MTLCommandBufferStatusCommitted);
  [cb waitUntilScheduled];
  [cb waitUntilCompleted];
  EXPECT_EQ([cb status], MTLCommandBufferStatusCompleted);
  EXPECT_EQ([cb error], nil);
  EXPECT_TRUE(on_worker);
  EXPECT_EQ(events, std::vector<std::string>({"scheduled", "work 1", "work 2", "completed 1", "completed 2"}));
}

TEST_F(Fakes, CommandBuffersRunInEnqueueOrder) {
  id<MTLCommandQueue> queue = [MTLCreateSystemDefaultDevice() newCommandQueue];
  std::mutex mu;
  std::vector<int> order;
  std::vector<id<MTLCommandBuffer>> cbs;
  for (int i = 0; i < 8; ++i) {
    id<MTLCommandBuffer> cb = [queue commandBuffer];
    [cb enqueue];
    EmuEncode(cb, "item", [&, i] {
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(i);
    });
    cbs.push_back(cb);
  }
  // Committed in reverse: they still run in the order they were enqueued.
  for (int i = 7; i >= 0; --i) [cbs[i] commit];
  [cbs[7] waitUntilCompleted];
  EXPECT_EQ(order, std::vector<int>({0, 1, 2, 3, 4, 5, 6, 7}));
}

// Queue B's command buffer waits for an event that queue A's signals: B's work runs
// after A's even though B is committed first.
TEST_F(Fakes, SharedEventOrdersTwoQueues) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  id<MTLCommandQueue> qa = [device newCommandQueue], qb = [device newCommandQueue];
  id<MTLSharedEvent> event = [device newSharedEvent];
  EXPECT_EQ([event signaledValue], 0u);
  std::mutex mu;
  std::vector<std::string> order;
  id<MTLCommandBuffer> b = [qb commandBuffer];
  [b encodeWaitForEvent:event value:1];
  EmuEncode(b, "b", [&] {
    std::lock_guard<std::mutex> lock(mu);
    order.push_back("b");
  });
  [b commit];
  id<MTLCommandBuffer> a = [qa commandBuffer];
  EmuEncode(a, "a", [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::lock_guard<std::mutex> lock(mu);
    order.push_back("a");
  });
  [a encodeSignalEvent:event value:1];
  [a commit];
  [b waitUntilCompleted];
  [a waitUntilCompleted];
  EXPECT_EQ(order, std::vector<std::string>({"a", "b"}));
  EXPECT_EQ([event signaledValue], 1u);
}

TEST_F(Fakes, SharedEventSignaledFromTheCpu) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  id<MTLCommandQueue> queue = [device newCommandQueue];
  id<MTLSharedEvent> event = [device newSharedEvent];
  std::atomic<bool> ran{false};
  id<MTLCommandBuffer> cb = [queue commandBuffer];
  [cb encodeWaitForEvent:event value:5];
  EmuEncode(cb, "after the wait", [&] { ran = true; });
  [cb commit];
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(ran.load());
  EXPECT_FALSE([event waitUntilSignaledValue:5 timeoutMS:1]);
  event.signaledValue = 5;
  EXPECT_TRUE([event waitUntilSignaledValue:5 timeoutMS:1]);
  event.signaledValue = 3;  // "changed only if you provide a larger value"
  EXPECT_EQ([event signaledValue], 5u);
  [cb waitUntilCompleted];
  EXPECT_TRUE(ran.load());
}

TEST_F(Fakes, BlitCopyAndFill) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  id<MTLBuffer> src = FloatBuffer(device, {1, 2, 3, 4});
  id<MTLBuffer> dst = [device newBufferWithLength:32 options:MTLResourceStorageModeShared];
  id<MTLCommandBuffer> cb = [[device newCommandQueue] commandBuffer];
  id<MTLBlitCommandEncoder> blit = [cb blitCommandEncoder];
  [blit fillBuffer:dst range:NSMakeRange(0, 32) value:0];
  [blit copyFromBuffer:src sourceOffset:4 toBuffer:dst destinationOffset:16 size:8];
  [blit endEncoding];
  CommitAndWait(cb);
  EXPECT_EQ(Floats(dst, 0, 8), std::vector<float>({0, 0, 0, 0, 2, 3, 0, 0}));
}

TEST_F(Fakes, FailingWorkEndsInErrorWithItsMessage) {
  id<MTLCommandQueue> queue = [MTLCreateSystemDefaultDevice() newCommandQueue];
  id<MTLCommandBuffer> cb = [queue commandBuffer];
  bool later_ran = false;
  EmuEncodeFallible(cb, "kernel", [] { return std::string("page fault"); }, MTLCommandBufferErrorPageFault);
  EmuEncode(cb, "later", [&] { later_ran = true; });
  __block MTLCommandBufferStatus seen = MTLCommandBufferStatusNotEnqueued;
  [cb addCompletedHandler:^(id<MTLCommandBuffer> b) { seen = [b status]; }];
  [cb commit];
  [cb waitUntilCompleted];
  EXPECT_EQ([cb status], MTLCommandBufferStatusError);
  EXPECT_EQ(seen, MTLCommandBufferStatusError);  // completed handlers run on failure too
  EXPECT_FALSE(later_ran);
  ASSERT_NE([cb error], nil);
  EXPECT_EQ([[cb error] code], MTLCommandBufferErrorPageFault);
  EXPECT_TRUE([[[cb error] domain] isEqualToString:MTLCommandBufferErrorDomain]);
  EXPECT_STREQ([[[cb error] localizedDescription] UTF8String], "kernel: page fault");
}

TEST_F(Fakes, HooksFailCreationAndCommandBuffers) {
  EmuFailNextInit("MTLDevice", 1);
  EXPECT_EQ(MTLCreateSystemDefaultDevice(), nil);
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  ASSERT_NE(device, nil);
  EmuFailNextInit("MTLCommandQueue", 1);
  EXPECT_EQ([device newCommandQueue], nil);
  id<MTLCommandQueue> queue = [device newCommandQueue];
  EmuFailNextInit("MTLCommandBuffer", 1);
  EXPECT_EQ([queue commandBuffer], nil);
  EmuFailNextInit("MTLBuffer", 2);
  EXPECT_EQ([device newBufferWithLength:16 options:MTLResourceStorageModeShared], nil);
  EXPECT_EQ([device newBufferWithLength:16 options:MTLResourceStorageModeShared], nil);
  EXPECT_NE([device newBufferWithLength:16 options:MTLResourceStorageModeShared], nil);

  EmuFailNextCommandBuffers(1, "injected");
  bool ran = false;
  id<MTLCommandBuffer> cb = [queue commandBuffer];
  EmuEncode(cb, "work", [&] { ran = true; });
  [cb commit];
  [cb waitUntilCompleted];
  EXPECT_EQ([cb status], MTLCommandBufferStatusError);
  EXPECT_FALSE(ran);
  EXPECT_STREQ([[[cb error] localizedDescription] UTF8String], "injected");
  id<MTLCommandBuffer> next = [queue commandBuffer];
  CommitAndWait(next);  // only one was to fail
}

// A queue, command buffers and captured objects are all released once the work is
// done, also when the caller keeps no reference (fire and forget).
TEST_F(Fakes, NothingLeaksFromUnwaitedCommandBuffers) {
  id<MTLSharedEvent> done_event;
  @autoreleasepool {  // commandBuffer returns autoreleased objects
    id<MTLDevice> device = MTLCreateSystemDefaultDevice();
    done_event = [device newSharedEvent];
    id<MTLCommandQueue> queue = [device newCommandQueue];
    for (int i = 0; i < 4; ++i) {
      id<MTLCommandBuffer> cb = [queue commandBuffer];
      id<MTLBuffer> b = [device newBufferWithLength:16 options:MTLResourceStorageModeShared];
      EmuEncode(cb, "touch", [b] { static_cast<char*>([b contents])[0] = 1; });
      if (i == 3) [cb encodeSignalEvent:done_event value:1];
      [cb commit];
    }
  }
  ASSERT_TRUE([done_event waitUntilSignaledValue:1 timeoutMS:5000]);
  done_event = nil;
  // The worker drops its references right after the last item; give it a moment.
  for (int i = 0; i < 200 && objc_emu_live_objects() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(objc_emu_live_objects(), 0);
}

// -------------------------------------------------------- Metal validation failures
TEST_F(Fakes, MetalMisuseAbortsAsTheValidationLayerDoes) {
  auto cb = [] { return [[MTLCreateSystemDefaultDevice() newCommandQueue] commandBuffer]; };
  EXPECT_DEATH(
      {
        id<MTLCommandBuffer> b = cb();
        [b commit];
        [b commit];
      },
      "commit\\]: failed assertion `commit an already committed command buffer'");
  EXPECT_DEATH(
      {
        id<MTLCommandBuffer> b = cb();
        [b commit];
        [b addCompletedHandler:^(id<MTLCommandBuffer>) {
        }];
      },
      "Completed handler provided after commit call");
  EXPECT_DEATH(
      {
        id<MTLCommandBuffer> b = cb();
        [b commit];
        [b addScheduledHandler:^(id<MTLCommandBuffer>) {
        }];
      },
      "Scheduled handler provided after commit call");
  EXPECT_DEATH(
      {
        id<MTLCommandBuffer> b = cb();
        [b commit];
        EmuEncode(b, "late", [] {});
      },
      "already committed");
  EXPECT_DEATH([cb() waitUntilCompleted], "waitUntilCompleted on uncommitted command buffer");
  EXPECT_DEATH(
      {
        id<MTLCommandBuffer> b = cb();
        id<MTLBlitCommandEncoder> e = [b blitCommandEncoder];
        [b commit];
        [e endEncoding];
      },
      "commit command buffer with uncommitted encoder");
  EXPECT_DEATH(
      {
        id<MTLCommandBuffer> b = cb();
        id<MTLBlitCommandEncoder> e = [b blitCommandEncoder];
        EmuEncode(b, "kernel", [] {});
        [e endEncoding];
      },
      "a command encoder is already encoding");
  EXPECT_DEATH(
      {
        @autoreleasepool {
          (void)[cb() blitCommandEncoder];
        }
      },
      "Command encoder released without endEncoding");
  EXPECT_DEATH(
      {
        id<MTLDevice> d = MTLCreateSystemDefaultDevice();
        (void)[d newBufferWithLength:0 options:MTLResourceStorageModeShared];
      },
      "length must be greater than 0");
}

TEST_F(Fakes, BlitArgumentsAreChecked) {
  auto setup = [](id<MTLBuffer>* buf) {
    id<MTLDevice> d = MTLCreateSystemDefaultDevice();
    *buf = [d newBufferWithLength:64 options:MTLResourceStorageModeShared];
    return [[[d newCommandQueue] commandBuffer] blitCommandEncoder];
  };
  EXPECT_DEATH(
      {
        id<MTLBuffer> b;
        id<MTLBlitCommandEncoder> e = setup(&b);
        [e copyFromBuffer:b sourceOffset:2 toBuffer:b destinationOffset:32 size:8];
      },
      "must be multiples of 4 on macOS");
  EXPECT_DEATH(
      {
        id<MTLBuffer> b;
        id<MTLBlitCommandEncoder> e = setup(&b);
        [e copyFromBuffer:b sourceOffset:0 toBuffer:b destinationOffset:60 size:8];
      },
      "outside the buffer of length 64");
  EXPECT_DEATH(
      {
        id<MTLBuffer> b;
        id<MTLBlitCommandEncoder> e = setup(&b);
        [e copyFromBuffer:b sourceOffset:0 toBuffer:b destinationOffset:4 size:8];
      },
      "overlap");
  EXPECT_DEATH(
      {
        id<MTLBuffer> b;
        id<MTLBlitCommandEncoder> e = setup(&b);
        [e fillBuffer:b range:NSMakeRange(0, 0) value:1];
      },
      "range.length must be greater than 0");
}

// ============================================================================== MPS
TEST_F(Fakes, VectorsAndMatricesCheckTheirBuffers) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  id<MTLBuffer> b = [device newBufferWithLength:64 options:MTLResourceStorageModeShared];
  MPSVector* v = Vec(b, 16, 12);
  EXPECT_EQ([v length], 12u);
  EXPECT_EQ([v offset], 16u);
  EXPECT_EQ([v data], b);
  EXPECT_EQ([v device], device);
  MPSMatrixDescriptor* d = [MPSMatrixDescriptor matrixDescriptorWithRows:2
                                                                 columns:3
                                                                rowBytes:16
                                                                dataType:MPSDataTypeFloat32];
  MPSMatrix* m = [[MPSMatrix alloc] initWithBuffer:b offset:32 descriptor:d];
  EXPECT_EQ([m rows], 2u);
  EXPECT_EQ([m rowBytes], 16u);
  EmuFailNextInit("MPSVector", 1);
  EXPECT_EQ(Vec(b, 0, 4), nil);

  EXPECT_DEATH({ (void)Vec(b, 2, 4); }, "offset 2 is not a multiple of the element size 4");
  EXPECT_DEATH({ (void)Vec(b, 16, 13); }, "outside the buffer of length 64");
  EXPECT_DEATH(
      {
        (void)[MPSMatrixDescriptor matrixDescriptorWithRows:2 columns:3 rowBytes:10 dataType:MPSDataTypeFloat32];
      },
      "rowBytes 10 is not a multiple of the element size 4");
  EXPECT_DEATH(
      {
        (void)[MPSMatrixDescriptor matrixDescriptorWithRows:2 columns:3 rowBytes:8 dataType:MPSDataTypeFloat32];
      },
      "less than columns");
  // (rows-1)*rowBytes + columns*4 = 16 + 12 = 28 bytes from offset 40 > 64.
  EXPECT_DEATH({ (void)[[MPSMatrix alloc] initWithBuffer:b offset:40 descriptor:d]; }, "outside the buffer");
}

MPSImage* Image(id<MTLDevice> device, MPSImageFeatureChannelFormat f, NSUInteger w, NSUInteger h, NSUInteger c,
                NSUInteger n) {
  MPSImageDescriptor* d = [MPSImageDescriptor imageDescriptorWithChannelFormat:f
                                                                         width:w
                                                                        height:h
                                                               featureChannels:c
                                                                numberOfImages:n
                                                                         usage:MTLTextureUsageShaderRead];
  return [[MPSImage alloc] initWithDevice:device imageDescriptor:d];
}

TEST_F(Fakes, ImageReadWriteBothLayouts) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  const NSUInteger W = 3, H = 2, C = 5, N = 2;
  MPSImage* image = Image(device, MPSImageFeatureChannelFormatFloat32, W, H, C, N);
  ASSERT_NE(image, nil);
  EXPECT_EQ([image pixelFormat], MTLPixelFormatRGBA32Float);
  EXPECT_EQ([image featureChannelFormat], MPSImageFeatureChannelFormatFloat32);
  EXPECT_EQ([image numberOfImages], N);
  std::vector<float> hwc(W * H * C), chw(W * H * C), back(W * H * C);
  for (size_t i = 0; i < hwc.size(); ++i) hwc[i] = static_cast<float>(i) + 0.5f;
  [image writeBytes:hwc.data() dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:1];
  [image readBytes:back.data() dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:1];
  EXPECT_EQ(back, hwc);
  [image readBytes:chw.data() dataLayout:MPSDataLayoutFeatureChannelsxHeightxWidth imageIndex:1];
  for (size_t h = 0; h < H; ++h)
    for (size_t w = 0; w < W; ++w)
      for (size_t c = 0; c < C; ++c) ASSERT_EQ(chw[(c * H + h) * W + w], hwc[(h * W + w) * C + c]);
  EXPECT_EQ(Image(device, MPSImageFeatureChannelFormatUnorm8, 1, 1, 2, 1).pixelFormat, MTLPixelFormatRG8Unorm);
  EXPECT_EQ(Image(device, MPSImageFeatureChannelFormatFloat16, 1, 1, 1, 1).pixelFormat, MTLPixelFormatR16Float);
  EmuFailNextInit("MPSImage", 1);
  EXPECT_EQ(Image(device, MPSImageFeatureChannelFormatFloat16, 1, 1, 1, 1), nil);
  EXPECT_DEATH(
      { [image readBytes:back.data() dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:2]; },
      "imageIndex 2 is not less than numberOfImages 2");
}

// Image -> matrix -> image through the GPU converters, with the layouts of
// MPSImageCopy.h: one image per row, HWC or CHW order.
TEST_F(Fakes, ImageMatrixConvertersBothLayouts) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  id<MTLCommandQueue> queue = [device newCommandQueue];
  const NSUInteger W = 2, H = 3, C = 6, N = 3, row = W * H * C;
  for (MPSDataLayout layout : {MPSDataLayoutHeightxWidthxFeatureChannels, MPSDataLayoutFeatureChannelsxHeightxWidth}) {
    MPSImage* src = Image(device, MPSImageFeatureChannelFormatFloat32, W, H, C, N);
    std::vector<float> img(row);
    for (NSUInteger n = 0; n < N; ++n) {
      for (size_t i = 0; i < row; ++i) img[i] = static_cast<float>(n * 1000 + i);
      [src writeBytes:img.data() dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:n];
    }
    id<MTLBuffer> mb = [device newBufferWithLength:N * row * sizeof(float) options:MTLResourceStorageModeShared];
    MPSMatrix* matrix = [[MPSMatrix alloc]
        initWithBuffer:mb
                offset:0
            descriptor:[MPSMatrixDescriptor matrixDescriptorWithRows:N
                                                             columns:row
                                                            rowBytes:row * sizeof(float)
                                                            dataType:MPSDataTypeFloat32]];
    MPSImageCopyToMatrix* to_matrix = [[MPSImageCopyToMatrix alloc] initWithDevice:device dataLayout:layout];
    id<MTLCommandBuffer> cb = [queue commandBuffer];
    [to_matrix encodeToCommandBuffer:cb sourceImage:src destinationMatrix:matrix];
    CommitAndWait(cb);
    const std::vector<float> m = Floats(mb, 0, N * row);
    for (NSUInteger n = 0; n < N; ++n)
      for (size_t h = 0; h < H; ++h)
        for (size_t w = 0; w < W; ++w)
          for (size_t c = 0; c < C; ++c) {
            const size_t col = layout == MPSDataLayoutHeightxWidthxFeatureChannels ? (h * W + w) * C + c
                                                                                   : (c * H + h) * W + w;
            ASSERT_EQ(m[n * row + col], static_cast<float>(n * 1000 + (h * W + w) * C + c));
          }

    MPSImage* dst = Image(device, MPSImageFeatureChannelFormatFloat32, W, H, C, N);
    MPSMatrixCopyToImage* to_image = [[MPSMatrixCopyToImage alloc] initWithDevice:device dataLayout:layout];
    cb = [queue commandBuffer];
    [to_image encodeToCommandBuffer:cb sourceMatrix:matrix destinationImage:dst];
    [dst synchronizeOnCommandBuffer:cb];  // managed storage: make the GPU's writes visible
    CommitAndWait(cb);
    std::vector<float> got(row);
    for (NSUInteger n = 0; n < N; ++n) {
      [dst readBytes:got.data() dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:n];
      for (size_t i = 0; i < row; ++i) ASSERT_EQ(got[i], static_cast<float>(n * 1000 + i));
    }
  }
}

// Managed storage (the emulation's model of Macs with separate GPU memory): without
// -synchronizeOnCommandBuffer: the CPU keeps seeing the old contents.
TEST_F(Fakes, ManagedImageNeedsSynchronize) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  MPSImage* image = Image(device, MPSImageFeatureChannelFormatFloat32, 1, 1, 4, 1);
  const float before[4] = {1, 2, 3, 4};
  [image writeBytes:before dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:0];
  id<MTLBuffer> mb = FloatBuffer(device, {9, 8, 7, 6});
  MPSMatrix* matrix = [[MPSMatrix alloc]
      initWithBuffer:mb
          descriptor:[MPSMatrixDescriptor matrixDescriptorWithRows:1 columns:4 rowBytes:16 dataType:MPSDataTypeFloat32]];
  id<MTLCommandBuffer> cb = [[device newCommandQueue] commandBuffer];
  [[[MPSMatrixCopyToImage alloc] initWithDevice:device dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels]
      encodeToCommandBuffer:cb
               sourceMatrix:matrix
           destinationImage:image];
  CommitAndWait(cb);
  float got[4];
  [image readBytes:got dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:0];
  EXPECT_EQ(std::vector<float>(got, got + 4), std::vector<float>({1, 2, 3, 4}));
}

TEST_F(Fakes, ImageConverterMisuseAborts) {
  // Reading an image that encoded GPU work writes, before that work completed.
  EXPECT_DEATH(
      {
        id<MTLDevice> device = MTLCreateSystemDefaultDevice();
        MPSImage* image = Image(device, MPSImageFeatureChannelFormatFloat32, 1, 1, 4, 1);
        id<MTLBuffer> mb = [device newBufferWithLength:16 options:MTLResourceStorageModeShared];
        MPSMatrix* matrix = [[MPSMatrix alloc]
            initWithBuffer:mb
                descriptor:[MPSMatrixDescriptor matrixDescriptorWithRows:1
                                                                 columns:4
                                                                rowBytes:16
                                                                dataType:MPSDataTypeFloat32]];
        id<MTLCommandBuffer> cb = [[device newCommandQueue] commandBuffer];
        // Held back by an event nobody signals, so the copy has surely not run yet.
        [cb encodeWaitForEvent:[device newSharedEvent] value:1];
        [[[MPSMatrixCopyToImage alloc] initWithDevice:device dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels]
            encodeToCommandBuffer:cb
                     sourceMatrix:matrix
                 destinationImage:image];
        [cb commit];
        float got[4];
        [image readBytes:got dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:0];
      },
      "encoded GPU command\\(s\\) that write it have not completed");
  // The matrix type must be the image's channel type.
  EXPECT_DEATH(
      {
        id<MTLDevice> device = MTLCreateSystemDefaultDevice();
        MPSImage* image = Image(device, MPSImageFeatureChannelFormatFloat16, 1, 1, 4, 1);
        id<MTLBuffer> mb = [device newBufferWithLength:16 options:MTLResourceStorageModeShared];
        MPSMatrix* matrix = [[MPSMatrix alloc]
            initWithBuffer:mb
                descriptor:[MPSMatrixDescriptor matrixDescriptorWithRows:1
                                                                 columns:4
                                                                rowBytes:16
                                                                dataType:MPSDataTypeFloat32]];
        id<MTLCommandBuffer> cb = [[device newCommandQueue] commandBuffer];
        [[[MPSImageCopyToMatrix alloc] initWithDevice:device dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels]
            encodeToCommandBuffer:cb
                      sourceImage:image
                destinationMatrix:matrix];
      },
      "does not match the image's feature channel type MPSDataTypeFloat16");
  // Too few rows for the images.
  EXPECT_DEATH(
      {
        id<MTLDevice> device = MTLCreateSystemDefaultDevice();
        MPSImage* image = Image(device, MPSImageFeatureChannelFormatFloat32, 1, 1, 4, 2);
        id<MTLBuffer> mb = [device newBufferWithLength:16 options:MTLResourceStorageModeShared];
        MPSMatrix* matrix = [[MPSMatrix alloc]
            initWithBuffer:mb
                descriptor:[MPSMatrixDescriptor matrixDescriptorWithRows:1
                                                                 columns:4
                                                                rowBytes:16
                                                                dataType:MPSDataTypeFloat32]];
        id<MTLCommandBuffer> cb = [[device newCommandQueue] commandBuffer];
        [[[MPSImageCopyToMatrix alloc] initWithDevice:device dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels]
            encodeToCommandBuffer:cb
                      sourceImage:image
                destinationMatrix:matrix];
      },
      "2 images need one row each");
}

// ------------------------------------------------------------- matrix multiplication
// MPSMatrixMultiplication against a naive loop in double. The inputs are multiples of
// 1/4 below 3 and the scales 1.5 and -0.5, so every float32 product and sum is exact
// whatever order the BLAS adds in: the float32 results must equal the double ones, and
// the float16 ones must equal them rounded once to float16.
struct TestMatrix {
  id<MTLBuffer> buffer;
  MPSMatrix* matrix;
  MPSDataType type;
  size_t offset, row_bytes, matrix_bytes, rows, cols, matrices;
  size_t Elem() const { return type == MPSDataTypeFloat16 ? 2 : type == MPSDataTypeUnorm8 ? 1 : 4; }
  uint8_t* At(size_t k, size_t r, size_t c) const {
    return static_cast<uint8_t*>([buffer contents]) + offset + k * matrix_bytes + r * row_bytes + c * Elem();
  }
  double Get(size_t k, size_t r, size_t c) const {
    if (type == MPSDataTypeFloat16) return static_cast<double>(*reinterpret_cast<const _Float16*>(At(k, r, c)));
    return *reinterpret_cast<const float*>(At(k, r, c));
  }
  void Set(size_t k, size_t r, size_t c, double v) const {
    if (type == MPSDataTypeFloat16) {
      *reinterpret_cast<_Float16*>(At(k, r, c)) = static_cast<_Float16>(v);
    } else {
      *reinterpret_cast<float*>(At(k, r, c)) = static_cast<float>(v);
    }
  }
  std::vector<uint8_t> Bytes() const {
    const auto* p = static_cast<const uint8_t*>([buffer contents]);
    return std::vector<uint8_t>(p, p + [buffer length]);
  }
};

// rows x cols matrices with padding after each row (pad_cols) and matrix (one row), from
// byte offset 2 elements into their buffer; every element, padding included, set to a
// pattern (seed) or NaN (seed < 0).
TestMatrix MakeMatrix(id<MTLDevice> device, size_t rows, size_t cols, int seed, MPSDataType type = MPSDataTypeFloat32,
                      size_t matrices = 1, size_t pad_cols = 3) {
  TestMatrix t;
  t.type = type;
  t.rows = rows;
  t.cols = cols;
  t.matrices = matrices;
  t.row_bytes = (cols + pad_cols) * t.Elem();
  t.matrix_bytes = (rows + 1) * t.row_bytes;
  t.offset = 2 * t.Elem();
  t.buffer = [device newBufferWithLength:t.offset + matrices * t.matrix_bytes options:MTLResourceStorageModeShared];
  MPSMatrixDescriptor* d = matrices == 1 ? [MPSMatrixDescriptor matrixDescriptorWithRows:rows
                                                                                 columns:cols
                                                                                rowBytes:t.row_bytes
                                                                                dataType:type]
                                         : [MPSMatrixDescriptor matrixDescriptorWithRows:rows
                                                                                 columns:cols
                                                                                matrices:matrices
                                                                                rowBytes:t.row_bytes
                                                                             matrixBytes:t.matrix_bytes
                                                                                dataType:type];
  t.matrix = [[MPSMatrix alloc] initWithBuffer:t.buffer offset:t.offset descriptor:d];
  if (type == MPSDataTypeUnorm8) return t;
  for (size_t k = 0; k < matrices; ++k)
    for (size_t r = 0; r < rows + 1; ++r)
      for (size_t c = 0; c < cols + pad_cols; ++c) {
        const long i = static_cast<long>((k * 131 + r * 17 + c * 7) * 13 + seed * 29);
        t.Set(k, r, c, seed < 0 ? std::nan("") : static_cast<double>(i % 23 - 11) / 4.0);
      }
  return t;
}

struct GemmCase {
  bool ta = false, tb = false;
  size_t M = 3, N = 4, K = 5;
  double alpha = 1.5, beta = -0.5;
  MTLOrigin oa = MTLOriginMake(1, 2, 0), ob = MTLOriginMake(2, 1, 0), oc = MTLOriginMake(3, 1, 0);
  size_t matrices = 1;
  NSUInteger batch_start = 0;
  long batch_size = -1;  // -1: leave the default
  bool short_init = false;
};

std::string Describe(const GemmCase& g, MPSDataType type) {
  return std::string(type == MPSDataTypeFloat16 ? "float16" : "float32") + " ta=" + std::to_string(g.ta) +
         " tb=" + std::to_string(g.tb) + " alpha=" + std::to_string(g.alpha) + " beta=" + std::to_string(g.beta) +
         " batch=" + std::to_string(g.batch_start) + "+" + std::to_string(g.batch_size);
}

// Runs one multiplication and compares every element of C's buffer: the windows of the
// batch with the naive loop, everything else with its bytes before.
void CheckGemm(const GemmCase& g, MPSDataType type = MPSDataTypeFloat32) {
  SCOPED_TRACE(Describe(g, type));
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  const size_t ar = g.ta ? g.K : g.M, ac = g.ta ? g.M : g.K, br = g.tb ? g.N : g.K, bc = g.tb ? g.K : g.N;
  const TestMatrix A = MakeMatrix(device, g.oa.x + ar + 1, g.oa.y + ac + 2, 1, type, g.matrices);
  const TestMatrix B = MakeMatrix(device, g.ob.x + br + 2, g.ob.y + bc + 1, 2, type, g.matrices);
  // beta 0: C starts as NaN, which the kernel must not read.
  const TestMatrix C = MakeMatrix(device, g.oc.x + g.M + 1, g.oc.y + g.N + 1, g.beta == 0 ? -1 : 3, type, g.matrices);
  const std::vector<uint8_t> before = C.Bytes();
  MPSMatrixMultiplication* kernel =
      g.short_init ? [[MPSMatrixMultiplication alloc] initWithDevice:device
                                                          resultRows:g.M
                                                       resultColumns:g.N
                                                     interiorColumns:g.K]
                   : [[MPSMatrixMultiplication alloc] initWithDevice:device
                                                       transposeLeft:g.ta
                                                      transposeRight:g.tb
                                                          resultRows:g.M
                                                       resultColumns:g.N
                                                     interiorColumns:g.K
                                                               alpha:g.alpha
                                                                beta:g.beta];
  ASSERT_NE(kernel, nil);
  EXPECT_EQ([kernel device], device);
  EXPECT_EQ([kernel leftMatrixOrigin].x, 0u);  // Apple's defaults
  EXPECT_EQ([kernel batchStart], 0u);
  kernel.leftMatrixOrigin = g.oa;
  kernel.rightMatrixOrigin = g.ob;
  kernel.resultMatrixOrigin = g.oc;
  kernel.batchStart = g.batch_start;
  if (g.batch_size >= 0) kernel.batchSize = static_cast<NSUInteger>(g.batch_size);
  EXPECT_EQ([kernel resultMatrixOrigin].x, g.oc.x);
  EXPECT_EQ([kernel resultMatrixOrigin].y, g.oc.y);
  id<MTLCommandBuffer> cb = [[device newCommandQueue] commandBuffer];
  [kernel encodeToCommandBuffer:cb leftMatrix:A.matrix rightMatrix:B.matrix resultMatrix:C.matrix];
  EXPECT_EQ(C.Bytes(), before);  // nothing runs at encode time
  CommitAndWait(cb);

  const size_t first = g.batch_start;
  const size_t count = g.batch_size >= 0 ? static_cast<size_t>(g.batch_size) : g.matrices - first;
  const std::vector<uint8_t> after = C.Bytes();
  const uint8_t* base = static_cast<const uint8_t*>([C.buffer contents]);
  std::vector<bool> in_window(after.size(), false);
  size_t checked = 0;
  for (size_t k = first; k < first + count; ++k) {
    for (size_t i = 0; i < g.M; ++i) {
      for (size_t j = 0; j < g.N; ++j) {
        double sum = 0;
        for (size_t p = 0; p < g.K; ++p) {
          const double a = g.ta ? A.Get(k, g.oa.x + p, g.oa.y + i) : A.Get(k, g.oa.x + i, g.oa.y + p);
          const double b = g.tb ? B.Get(k, g.ob.x + j, g.ob.y + p) : B.Get(k, g.ob.x + p, g.ob.y + j);
          sum += a * b;
        }
        const size_t r = g.oc.x + i, c = g.oc.y + j;
        // The old value, read from the bytes before (C itself now holds the result).
        double old;
        const size_t at = static_cast<size_t>(C.At(k, r, c) - base);
        if (type == MPSDataTypeFloat16) {
          _Float16 h;
          std::memcpy(&h, &before[at], sizeof(h));
          old = static_cast<double>(h);
        } else {
          float f;
          std::memcpy(&f, &before[at], sizeof(f));
          old = f;
        }
        double want = g.alpha * sum + (g.beta == 0 ? 0.0 : g.beta * old);
        if (type == MPSDataTypeFloat16) want = static_cast<double>(static_cast<_Float16>(want));
        ASSERT_EQ(C.Get(k, r, c), want) << "matrix " << k << " C[" << r << "][" << c << "]";
        for (size_t e = 0; e < C.Elem(); ++e) in_window[at + e] = true;
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, count * g.M * g.N);
  for (size_t i = 0; i < after.size(); ++i) {
    if (!in_window[i]) ASSERT_EQ(after[i], before[i]) << "byte " << i << " outside the windows changed";
  }
}

TEST_F(Fakes, MatrixMultiplicationMatchesANaiveLoop) {
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (const auto& [alpha, beta] : {std::pair<double, double>{1.5, -0.5}, {1.0, 0.0}, {-0.5, 1.0}}) {
        GemmCase g;
        g.ta = ta;
        g.tb = tb;
        g.alpha = alpha;
        g.beta = beta;
        CheckGemm(g);
      }
    }
  }
  // Origins at 0, and a product with one interior column.
  GemmCase zero;
  zero.oa = zero.ob = zero.oc = MTLOriginMake(0, 0, 0);
  CheckGemm(zero);
  GemmCase outer;
  outer.K = 1;
  outer.tb = true;
  CheckGemm(outer);
  // The short initializer: no transposes, alpha 1, beta 0 (C starts as NaN).
  GemmCase plain;
  plain.alpha = 1.0;
  plain.beta = 0.0;
  plain.short_init = true;
  CheckGemm(plain);
}

TEST_F(Fakes, MatrixMultiplicationBatches) {
  GemmCase g;
  g.matrices = 4;
  g.ta = true;
  g.batch_start = 1;
  g.batch_size = 2;  // matrices 1 and 2 only
  CheckGemm(g);
  g.batch_size = -1;  // the default: every matrix from batchStart on
  CheckGemm(g);
  g.batch_start = 0;
  g.batch_size = 4;
  g.beta = 0.0;
  CheckGemm(g);
}

TEST_F(Fakes, MatrixMultiplicationFloat16) {
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      GemmCase g;
      g.ta = ta;
      g.tb = tb;
      CheckGemm(g, MPSDataTypeFloat16);
      g.beta = 0.0;
      CheckGemm(g, MPSDataTypeFloat16);
    }
  }
  GemmCase batch;
  batch.matrices = 3;
  batch.batch_start = 1;
  CheckGemm(batch, MPSDataTypeFloat16);
}

// The result may live in an input's buffer, even in the same MPSMatrix, as long as the
// windows do not share an element: here C = A[:, 0:K] * B is written to A[:, K:K+N].
TEST_F(Fakes, MatrixMultiplicationDisjointWindowsOfOneMatrix) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  const size_t M = 3, N = 2, K = 4;
  const TestMatrix A = MakeMatrix(device, M, K + N, 1);
  const TestMatrix B = MakeMatrix(device, K, N, 2);
  std::vector<double> want(M * N);
  for (size_t i = 0; i < M; ++i)
    for (size_t j = 0; j < N; ++j) {
      double sum = 0;
      for (size_t p = 0; p < K; ++p) sum += A.Get(0, i, p) * B.Get(0, p, j);
      want[i * N + j] = 2.0 * sum + 0.5 * A.Get(0, i, K + j);
    }
  MPSMatrixMultiplication* kernel = [[MPSMatrixMultiplication alloc] initWithDevice:device
                                                                      transposeLeft:NO
                                                                     transposeRight:NO
                                                                         resultRows:M
                                                                      resultColumns:N
                                                                    interiorColumns:K
                                                                              alpha:2.0
                                                                               beta:0.5];
  kernel.resultMatrixOrigin = MTLOriginMake(0, K, 0);
  id<MTLCommandBuffer> cb = [[device newCommandQueue] commandBuffer];
  [kernel encodeToCommandBuffer:cb leftMatrix:A.matrix rightMatrix:B.matrix resultMatrix:A.matrix];
  CommitAndWait(cb);
  for (size_t i = 0; i < M; ++i)
    for (size_t j = 0; j < N; ++j) ASSERT_EQ(A.Get(0, i, K + j), want[i * N + j]) << i << "," << j;
}

TEST_F(Fakes, MatrixMultiplicationMisuseAbortsAndInitCanFail) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  EmuFailNextInit("MPSMatrixMultiplication", 1);
  EXPECT_EQ([[MPSMatrixMultiplication alloc] initWithDevice:device resultRows:1 resultColumns:1 interiorColumns:1],
            nil);
  EXPECT_NE([[MPSMatrixMultiplication alloc] initWithDevice:device resultRows:1 resultColumns:1 interiorColumns:1],
            nil);

  // A 3 x 4 = (3 x 5)(5 x 4) product; each case breaks one thing.
  auto gemm = [](BOOL ta, BOOL tb) {
    return [[MPSMatrixMultiplication alloc] initWithDevice:MTLCreateSystemDefaultDevice()
                                             transposeLeft:ta
                                            transposeRight:tb
                                                resultRows:3
                                             resultColumns:4
                                           interiorColumns:5
                                                     alpha:1.0
                                                      beta:0.0];
  };
  auto mat = [](size_t rows, size_t cols, MPSDataType type = MPSDataTypeFloat32, size_t matrices = 1) {
    return MakeMatrix(MTLCreateSystemDefaultDevice(), rows, cols, 1, type, matrices).matrix;
  };
  auto cb = [] { return [[MTLCreateSystemDefaultDevice() newCommandQueue] commandBuffer]; };

  EXPECT_DEATH({ [gemm(NO, NO) encodeToCommandBuffer:nil leftMatrix:mat(3, 5) rightMatrix:mat(5, 4) resultMatrix:mat(3, 4)]; },
               "commandBuffer is nil");
  EXPECT_DEATH({ [gemm(NO, NO) encodeToCommandBuffer:cb() leftMatrix:nil rightMatrix:mat(5, 4) resultMatrix:mat(3, 4)]; },
               "leftMatrix is nil");
  EXPECT_DEATH({ [gemm(NO, NO) encodeToCommandBuffer:cb() leftMatrix:mat(3, 5) rightMatrix:nil resultMatrix:mat(3, 4)]; },
               "rightMatrix is nil");
  EXPECT_DEATH({ [gemm(NO, NO) encodeToCommandBuffer:cb() leftMatrix:mat(3, 5) rightMatrix:mat(5, 4) resultMatrix:nil]; },
               "resultMatrix is nil");
  EXPECT_DEATH(
      {
        (void)[[MPSMatrixMultiplication alloc] initWithDevice:nil resultRows:1 resultColumns:1 interiorColumns:1];
      },
      "initWithDevice:resultRows:resultColumns:interiorColumns:\\]: failed assertion `device is nil");
  EXPECT_DEATH(
      {
        (void)[[MPSMatrixMultiplication alloc] initWithDevice:MTLCreateSystemDefaultDevice()
                                                   resultRows:2
                                                resultColumns:2
                                              interiorColumns:0];
      },
      "emulation check: .*interiorColumns \\(0\\) must all be at least 1");
  // Sizes, from the origins, as stored: A is 3 x 5 (5 x 3 transposed), B 5 x 4 (4 x 5), C 3 x 4.
  EXPECT_DEATH({ [gemm(NO, NO) encodeToCommandBuffer:cb() leftMatrix:mat(3, 4) rightMatrix:mat(5, 4) resultMatrix:mat(3, 4)]; },
               "leftMatrix \\(3 x 4\\) does not hold op\\(A\\) = A \\(resultRows x interiorColumns\\), 3 x 5");
  EXPECT_DEATH({ [gemm(YES, NO) encodeToCommandBuffer:cb() leftMatrix:mat(3, 5) rightMatrix:mat(5, 4) resultMatrix:mat(3, 4)]; },
               "leftMatrix \\(3 x 5\\) does not hold op\\(A\\) = A\\*\\*T .*, 5 x 3");
  EXPECT_DEATH({ [gemm(NO, YES) encodeToCommandBuffer:cb() leftMatrix:mat(3, 5) rightMatrix:mat(5, 4) resultMatrix:mat(3, 4)]; },
               "rightMatrix \\(5 x 4\\) does not hold op\\(B\\) = B\\*\\*T .*, 4 x 5");
  EXPECT_DEATH(
      {
        MPSMatrixMultiplication* k = gemm(NO, NO);
        k.resultMatrixOrigin = MTLOriginMake(0, 1, 0);  // column 1: one column short
        [k encodeToCommandBuffer:cb() leftMatrix:mat(3, 5) rightMatrix:mat(5, 4) resultMatrix:mat(3, 4)];
      },
      "resultMatrix \\(3 x 4\\) does not hold C .*from resultMatrixOrigin \\(row x = 0, column y = 1\\)");
  EXPECT_DEATH(
      {
        MPSMatrixMultiplication* k = gemm(NO, NO);
        k.rightMatrixOrigin = MTLOriginMake(1, 0, 0);  // row 1: one row short
        [k encodeToCommandBuffer:cb() leftMatrix:mat(3, 5) rightMatrix:mat(5, 4) resultMatrix:mat(3, 4)];
      },
      "rightMatrix \\(5 x 4\\) does not hold op\\(B\\) = B");
  EXPECT_DEATH(
      {
        MPSMatrixMultiplication* k = gemm(NO, NO);
        k.leftMatrixOrigin = MTLOriginMake(0, 0, 1);
        [k encodeToCommandBuffer:cb() leftMatrix:mat(3, 5) rightMatrix:mat(5, 4) resultMatrix:mat(3, 4)];
      },
      "leftMatrixOrigin.z is 1; it must be 0");
  // Types.
  EXPECT_DEATH(
      {
        [gemm(NO, NO) encodeToCommandBuffer:cb()
                                 leftMatrix:mat(3, 5, MPSDataTypeFloat16)
                                rightMatrix:mat(5, 4)
                               resultMatrix:mat(3, 4)];
      },
      "emulation check: the matrices' data types differ \\(left MPSDataTypeFloat16, right MPSDataTypeFloat32");
  EXPECT_DEATH(
      {
        [gemm(NO, NO) encodeToCommandBuffer:cb()
                                 leftMatrix:mat(3, 5, MPSDataTypeUnorm8)
                                rightMatrix:mat(5, 4, MPSDataTypeUnorm8)
                               resultMatrix:mat(3, 4, MPSDataTypeUnorm8)];
      },
      "MPSDataTypeFloat16 matrices only, not MPSDataTypeUnorm8");
  // The result overlapping an input: the same matrix, or another view of its buffer.
  EXPECT_DEATH(
      {
        MPSMatrix* square = mat(4, 4);
        [[[MPSMatrixMultiplication alloc] initWithDevice:MTLCreateSystemDefaultDevice()
                                              resultRows:4
                                           resultColumns:4
                                         interiorColumns:4] encodeToCommandBuffer:cb()
                                                                       leftMatrix:square
                                                                      rightMatrix:mat(4, 4)
                                                                     resultMatrix:square];
      },
      "emulation check: the result's window overlaps an input's window in the same buffer");
  EXPECT_DEATH(
      {
        const TestMatrix b = MakeMatrix(MTLCreateSystemDefaultDevice(), 5, 4, 1);
        // A 3 x 4 view of B's buffer, from its row 2 on.
        MPSMatrix* c = [[MPSMatrix alloc]
            initWithBuffer:b.buffer
                    offset:b.offset + 2 * b.row_bytes
                descriptor:[MPSMatrixDescriptor matrixDescriptorWithRows:3
                                                                 columns:4
                                                                rowBytes:b.row_bytes
                                                                dataType:MPSDataTypeFloat32]];
        [gemm(NO, NO) encodeToCommandBuffer:cb() leftMatrix:mat(3, 5) rightMatrix:b.matrix resultMatrix:c];
      },
      "overlaps an input's window");
  // Batches.
  EXPECT_DEATH(
      {
        MPSMatrixMultiplication* k = gemm(NO, NO);
        k.batchStart = 1;
        [k encodeToCommandBuffer:cb() leftMatrix:mat(3, 5) rightMatrix:mat(5, 4) resultMatrix:mat(3, 4)];
      },
      "batchStart 1 is not less than resultMatrix.matrices 1");
  EXPECT_DEATH(
      {
        // The default batch is the result's 3 matrices; the left matrix has 2.
        [gemm(NO, NO) encodeToCommandBuffer:cb()
                                 leftMatrix:mat(3, 5, MPSDataTypeFloat32, 2)
                                rightMatrix:mat(5, 4, MPSDataTypeFloat32, 3)
                               resultMatrix:mat(3, 4, MPSDataTypeFloat32, 3)];
      },
      "the batch \\[0, 3\\) is not within the 2 matrices of leftMatrix");
  EXPECT_DEATH(
      {
        MPSMatrixMultiplication* k = gemm(NO, NO);
        k.batchStart = 1;
        k.batchSize = 2;
        [k encodeToCommandBuffer:cb()
                      leftMatrix:mat(3, 5, MPSDataTypeFloat32, 3)
                     rightMatrix:mat(5, 4, MPSDataTypeFloat32, 3)
                    resultMatrix:mat(3, 4, MPSDataTypeFloat32, 2)];
      },
      "the batch \\[1, 3\\) is not within the 2 matrices of resultMatrix");
  EXPECT_DEATH(
      {
        MPSMatrixMultiplication* k = gemm(NO, NO);
        k.batchSize = 0;
        [k encodeToCommandBuffer:cb() leftMatrix:mat(3, 5) rightMatrix:mat(5, 4) resultMatrix:mat(3, 4)];
      },
      "emulation check: batchSize is 0");
  // Batched descriptors: matrixBytes a multiple of rowBytes, at least rows * rowBytes.
  EXPECT_DEATH(
      {
        (void)[MPSMatrixDescriptor matrixDescriptorWithRows:2
                                                    columns:3
                                                   matrices:2
                                                   rowBytes:16
                                                matrixBytes:40
                                                   dataType:MPSDataTypeFloat32];
      },
      "matrixBytes 40 must be a multiple of rowBytes 16 and at least rows \\* rowBytes = 32");
  EXPECT_DEATH(
      {
        (void)[MPSMatrixDescriptor matrixDescriptorWithRows:2
                                                    columns:3
                                                   matrices:2
                                                   rowBytes:16
                                                matrixBytes:16
                                                   dataType:MPSDataTypeFloat32];
      },
      "matrixBytes 16 must be a multiple of rowBytes 16 and at least rows \\* rowBytes = 32");
  EXPECT_DEATH(
      {
        // Two 2 x 3 matrices 32 bytes apart need 32 + 16 + 12 = 60 bytes.
        id<MTLBuffer> b = [MTLCreateSystemDefaultDevice() newBufferWithLength:56 options:MTLResourceStorageModeShared];
        (void)[[MPSMatrix alloc] initWithBuffer:b
                                     descriptor:[MPSMatrixDescriptor matrixDescriptorWithRows:2
                                                                                      columns:3
                                                                                     matrices:2
                                                                                     rowBytes:16
                                                                                  matrixBytes:32
                                                                                     dataType:MPSDataTypeFloat32]];
      },
      "outside the buffer of length 56");
}

// --------------------------------------------------------------------- optimizers
// Adam as MPSNNOptimizers.h writes it, in double.
void AdamRef(double lr, double b1, double b2, double eps, int t, std::vector<double>* w, std::vector<double>* m,
             std::vector<double>* v, std::vector<double>* vmax, const std::vector<double>& g) {
  const double lr_t = lr * std::sqrt(1 - std::pow(b2, t)) / (1 - std::pow(b1, t));
  for (size_t i = 0; i < w->size(); ++i) {
    (*m)[i] = b1 * (*m)[i] + (1 - b1) * g[i];
    (*v)[i] = b2 * (*v)[i] + (1 - b2) * g[i] * g[i];
    double denom = (*v)[i];
    if (vmax != nullptr) {
      (*vmax)[i] = std::max((*vmax)[i], (*v)[i]);
      denom = (*vmax)[i];
    }
    (*w)[i] -= lr_t * (*m)[i] / (std::sqrt(denom) + eps);
  }
}

void ExpectNear(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-6 * (1 + std::fabs(want[i]))) << i;
}

TEST_F(Fakes, AdamAndAmsGradFollowTheHeader) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  id<MTLCommandQueue> queue = [device newCommandQueue];
  for (bool amsgrad : {false, true}) {
    const std::vector<double> g0 = {0.5, -1.0, 2.0, 0.0}, g1 = {-0.25, 0.75, 0.1, 3.0};
    std::vector<double> w = {1.0, 2.0, -3.0, 0.5}, m(4, 0.0), v(4, 0.0), vmax(4, 0.0);
    // One buffer: values, m, v, vmax, grad at 16-byte steps.
    id<MTLBuffer> b = [device newBufferWithLength:5 * 16 options:MTLResourceStorageModeShared];
    float* p = static_cast<float*>([b contents]);
    std::memset(p, 0, 5 * 16);  // explicit: TFMPS_METAL_EMU_DEBUG=2 fills new buffers with NaN
    for (int i = 0; i < 4; ++i) p[i] = static_cast<float>(w[i]);
    MPSNNOptimizerAdam* adam = [[MPSNNOptimizerAdam alloc] initWithDevice:device
                                                                    beta1:0.9
                                                                    beta2:0.999
                                                                  epsilon:1e-7f
                                                                 timeStep:0
                                                      optimizerDescriptor:Desc(0.01f)];
    ASSERT_NE(adam, nil);
    EXPECT_EQ([adam timeStep], 0u);
    int t = 0;
    for (const auto& g : {g0, g1}) {
      for (int i = 0; i < 4; ++i) p[16 + i] = static_cast<float>(g[i]);
      id<MTLCommandBuffer> cb = [queue commandBuffer];
      MPSVector* values = Vec(b, 0, 4);
      if (amsgrad) {
        [adam encodeToCommandBuffer:cb
                inputGradientVector:Vec(b, 64, 4)
                  inputValuesVector:values
                inputMomentumVector:Vec(b, 16, 4)
                inputVelocityVector:Vec(b, 32, 4)
              maximumVelocityVector:Vec(b, 48, 4)
                 resultValuesVector:values];
      } else {
        [adam encodeToCommandBuffer:cb
                inputGradientVector:Vec(b, 64, 4)
                  inputValuesVector:values
                inputMomentumVector:Vec(b, 16, 4)
                inputVelocityVector:Vec(b, 32, 4)
                 resultValuesVector:values];
      }
      EXPECT_EQ([adam timeStep], static_cast<NSUInteger>(++t));  // t = t + 1 at encode
      CommitAndWait(cb);
      AdamRef(0.01, 0.9, 0.999, 1e-7f, t, &w, &m, &v, amsgrad ? &vmax : nullptr, g);
    }
    ExpectNear(Floats(b, 0, 4), w);
    ExpectNear(Floats(b, 16, 4), m);
    ExpectNear(Floats(b, 32, 4), v);
    if (amsgrad) ExpectNear(Floats(b, 48, 4), vmax);
  }
}

TEST_F(Fakes, SgdPlainMomentumNesterovAndOutOfPlace) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  id<MTLCommandQueue> queue = [device newCommandQueue];
  const std::vector<double> w0 = {1.0, -2.0, 0.5, 4.0}, g = {0.5, 0.25, -1.0, 2.0};
  const double lr = 0.1, mu = 0.9;
  for (int mode = 0; mode < 3; ++mode) {  // plain (nil momentum), momentum, Nesterov
    std::vector<float> init(16, 0.0f);
    for (int i = 0; i < 4; ++i) {
      init[i] = static_cast<float>(w0[i]);
      init[4 + i] = 0.3f;  // momentum
      init[8 + i] = static_cast<float>(g[i]);
    }
    id<MTLBuffer> b = FloatBuffer(device, init);
    MPSNNOptimizerStochasticGradientDescent* sgd =
        [[MPSNNOptimizerStochasticGradientDescent alloc] initWithDevice:device
                                                          momentumScale:static_cast<float>(mu)
                                                    useNesterovMomentum:mode == 2
                                                    optimizerDescriptor:Desc(static_cast<float>(lr))];
    id<MTLCommandBuffer> cb = [queue commandBuffer];
    [sgd encodeToCommandBuffer:cb
           inputGradientVector:Vec(b, 32, 4)
             inputValuesVector:Vec(b, 0, 4)
           inputMomentumVector:mode == 0 ? nil : Vec(b, 16, 4)
            resultValuesVector:Vec(b, 48, 4)];  // out of place
    CommitAndWait(cb);
    std::vector<double> want(4), mom(4);
    for (int i = 0; i < 4; ++i) {
      const double lrf = static_cast<float>(lr), muf = static_cast<float>(mu), m0 = 0.3f;
      if (mode == 0) {
        want[i] = w0[i] - lrf * g[i];
        mom[i] = m0;
      } else if (mode == 1) {
        mom[i] = muf * m0 + lrf * g[i];
        want[i] = w0[i] - mom[i];
      } else {
        mom[i] = muf * m0 + g[i];
        want[i] = w0[i] - lrf * (g[i] + mom[i] * muf);
      }
    }
    ExpectNear(Floats(b, 48, 4), want);
    ExpectNear(Floats(b, 16, 4), mom);
    ExpectNear(Floats(b, 0, 4), w0);  // the input values stay
  }
}

TEST_F(Fakes, RmsPropAndGradientOptions) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  const std::vector<double> w0 = {1.0, -2.0, 0.5, 4.0}, g = {0.5, 0.25, -3.0, 2.0};
  std::vector<float> init(12);
  for (int i = 0; i < 4; ++i) {
    init[i] = static_cast<float>(w0[i]);
    init[4 + i] = 0.1f;
    init[8 + i] = static_cast<float>(g[i]);
  }
  id<MTLBuffer> b = FloatBuffer(device, init);
  // Clip to [-1, 1], then rescale by 2, then add the L2 gradient 0.5 * w (Apple's order).
  MPSNNOptimizerDescriptor* d =
      [MPSNNOptimizerDescriptor optimizerDescriptorWithLearningRate:0.01f
                                                    gradientRescale:2.0f
                                              applyGradientClipping:YES
                                                    gradientClipMax:1.0f
                                                    gradientClipMin:-1.0f
                                                 regularizationType:MPSNNRegularizationTypeL2
                                                regularizationScale:0.5f];
  MPSNNOptimizerRMSProp* rms = [[MPSNNOptimizerRMSProp alloc] initWithDevice:device
                                                                       decay:0.9
                                                                     epsilon:1e-6f
                                                         optimizerDescriptor:d];
  EXPECT_FLOAT_EQ([rms learningRate], 0.01f);
  [rms setLearningRate:0.02f];  // the rate at encode time is the one used
  id<MTLCommandBuffer> cb = [[device newCommandQueue] commandBuffer];
  MPSVector* values = Vec(b, 0, 4);
  [rms encodeToCommandBuffer:cb
         inputGradientVector:Vec(b, 32, 4)
           inputValuesVector:values
     inputSumOfSquaresVector:Vec(b, 16, 4)
          resultValuesVector:values];
  [rms setLearningRate:1.0f];
  CommitAndWait(cb);
  std::vector<double> want(4), s(4);
  for (int i = 0; i < 4; ++i) {
    const double gt = std::min(std::max(g[i], -1.0), 1.0) * 2.0 + 0.5 * w0[i];
    s[i] = 0.9 * static_cast<double>(0.1f) + (1 - 0.9) * gt * gt;
    want[i] = w0[i] - static_cast<double>(0.02f) * gt / (std::sqrt(s[i]) + static_cast<double>(1e-6f));
  }
  ExpectNear(Floats(b, 16, 4), s);
  ExpectNear(Floats(b, 0, 4), want);
}

TEST_F(Fakes, OptimizerMisuseAbortsAndInitCanFail) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  EmuFailNextInit("MPSNNOptimizerAdam", 1);
  EXPECT_EQ([[MPSNNOptimizerAdam alloc] initWithDevice:device
                                                 beta1:0.9
                                                 beta2:0.999
                                               epsilon:1e-8f
                                              timeStep:0
                                   optimizerDescriptor:Desc(0.1f)],
            nil);
  auto sgd_encode = [](NSUInteger grad_len, NSUInteger grad_offset, MPSDataType grad_type) {
    id<MTLDevice> dev = MTLCreateSystemDefaultDevice();
    id<MTLBuffer> b = [dev newBufferWithLength:256 options:MTLResourceStorageModeShared];
    MPSNNOptimizerStochasticGradientDescent* sgd =
        [[MPSNNOptimizerStochasticGradientDescent alloc] initWithDevice:dev
                                                          momentumScale:0.0f
                                                    useNesterovMomentum:NO
                                                    optimizerDescriptor:Desc(0.1f)];
    MPSVector* values = Vec(b, 0, 8);
    [sgd encodeToCommandBuffer:[[dev newCommandQueue] commandBuffer]
           inputGradientVector:Vec(b, grad_offset, grad_len, grad_type)
             inputValuesVector:values
           inputMomentumVector:nil
            resultValuesVector:values];
  };
  EXPECT_DEATH(sgd_encode(7, 64, MPSDataTypeFloat32), "inputValuesVector has length 8, inputGradientVector 7: lengths must be equal");
  EXPECT_DEATH(sgd_encode(8, 64, MPSDataTypeFloat16), "MPSDataTypeFloat16; the emulation implements");
  EXPECT_DEATH(sgd_encode(8, 16, MPSDataTypeFloat32), "overlap in memory");
}

// ------------------------------------------------------------------ MPSCNNConvolution
// Expected values from Apple's placement rule (the window of output x starts at
// offset.x + x*stride - (kernelWidth >> 1)), zero edges, computed here in double.

}  // namespace

// A data source of given OHWI weights that counts its loads and purges.
@interface FakesConvSource : NSObject <MPSCNNConvolutionDataSource> {
 @public
  MPSCNNConvolutionDescriptor* desc;
  std::vector<float> w, b;
  int loads, purges;
  BOOL loadResult;
}
@end

@implementation FakesConvSource
- (MPSDataType)dataType { return MPSDataTypeFloat32; }
- (MPSCNNConvolutionDescriptor*)descriptor { return desc; }
- (void*)weights { return w.data(); }
- (float*)biasTerms { return b.empty() ? nullptr : b.data(); }
- (BOOL)load { ++loads; return loadResult; }
- (void)purge { ++purges; }
- (NSString*)label { return @"fakes"; }
- (id)copyWithZone:(NSZone*)zone { return self; }
@end

namespace {

FakesConvSource* ConvSource(NSUInteger kw, NSUInteger kh, NSUInteger in, NSUInteger out, std::vector<float> w,
                            std::vector<float> b = {}) {
  FakesConvSource* s = [[FakesConvSource alloc] init];
  s->desc = [MPSCNNConvolutionDescriptor cnnConvolutionDescriptorWithKernelWidth:kw
                                                                    kernelHeight:kh
                                                            inputFeatureChannels:in
                                                           outputFeatureChannels:out];
  s->w = std::move(w);
  s->b = std::move(b);
  s->loadResult = YES;
  return s;
}

// One image of w x h x c float32 from HWC values, written on the CPU.
MPSImage* FloatImage(id<MTLDevice> device, NSUInteger w, NSUInteger h, NSUInteger c, const std::vector<float>& hwc) {
  MPSImage* image = Image(device, MPSImageFeatureChannelFormatFloat32, w, h, c, 1);
  if (!hwc.empty()) [image writeBytes:hwc.data() dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:0];
  return image;
}

std::vector<float> ReadHwc(MPSImage* image) {
  std::vector<float> v([image width] * [image height] * [image featureChannels]);
  [image readBytes:v.data() dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:0];
  return v;
}

// A single-channel correlation with zero edges: y[i][j] = sum w[kh][kw] x[r][c],
// r = oy + i*s - (KH >> 1) + kh (no dilation).
std::vector<float> Correlate(const std::vector<float>& x, int H, int W, const std::vector<float>& w, int KH, int KW,
                             int ox, int oy, int s, int OH, int OW, double bias, bool relu) {
  std::vector<float> y(OH * OW);
  for (int i = 0; i < OH; ++i)
    for (int j = 0; j < OW; ++j) {
      double acc = bias;
      for (int kh = 0; kh < KH; ++kh)
        for (int kw = 0; kw < KW; ++kw) {
          const int r = oy + i * s - (KH >> 1) + kh, c = ox + j * s - (KW >> 1) + kw;
          if (r >= 0 && r < H && c >= 0 && c < W) acc += double(w[kh * KW + kw]) * x[r * W + c];
        }
      y[i * OW + j] = static_cast<float>(relu && acc < 0 ? 0.0 : acc);
    }
  return y;
}

void RunConv(id<MTLDevice> device, MPSCNNConvolution* conv, MPSImage* src, MPSImage* dst) {
  id<MTLCommandBuffer> cb = [[device newCommandQueue] commandBuffer];
  [conv encodeToCommandBuffer:cb sourceImage:src destinationImage:dst];
  [dst synchronizeOnCommandBuffer:cb];
  [cb commit];
  [cb waitUntilCompleted];
}

TEST_F(Fakes, ConvolutionPlacesTheWindowAsApplesOffsetRuleSays) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  const int H = 5, W = 6;
  std::vector<float> x(H * W);
  for (int i = 0; i < H * W; ++i) x[i] = static_cast<float>((i * 7) % 11) - 5.0f;
  struct Case { int kh, kw, ox, oy, s, oh, ow; };
  for (const Case& t : {Case{3, 3, 1, 1, 1, 5, 6}, Case{3, 3, 0, 0, 2, 3, 3}, Case{2, 2, 0, 0, 1, 5, 6},
                        Case{2, 3, 1, 1, 1, 4, 4}, Case{1, 1, 2, 1, 2, 2, 2}}) {
    std::vector<float> w(t.kh * t.kw);
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0.25f * static_cast<float>(i + 1) * (i % 2 ? -1.0f : 1.0f);
    FakesConvSource* source = ConvSource(t.kw, t.kh, 1, 1, w, {0.5f});
    source->desc.strideInPixelsX = source->desc.strideInPixelsY = t.s;
    source->desc.fusedNeuronDescriptor = [MPSNNNeuronDescriptor cnnNeuronDescriptorWithType:MPSCNNNeuronTypeReLU];
    MPSCNNConvolution* conv = [[MPSCNNConvolution alloc] initWithDevice:device weights:source];
    ASSERT_NE(conv, nil);
    EXPECT_EQ(source->loads, 1);
    EXPECT_EQ(source->purges, 1);  // every load balanced
    conv.offset = MPSOffset{t.ox, t.oy, 0};
    conv.accumulatorPrecisionOption = MPSNNConvolutionAccumulatorPrecisionOptionFloat;
    MPSImage* src = FloatImage(device, W, H, 1, x);
    MPSImage* dst = FloatImage(device, t.ow, t.oh, 1, {});
    RunConv(device, conv, src, dst);
    const std::vector<float> want = Correlate(x, H, W, w, t.kh, t.kw, t.ox, t.oy, t.s, t.oh, t.ow, 0.5, true);
    const std::vector<float> got = ReadHwc(dst);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_FLOAT_EQ(got[i], want[i]) << "kernel " << t.kh << "x" << t.kw << " at " << i;
  }
}

TEST_F(Fakes, ConvolutionGroupsMapChannelsAndRejectUnalignedGroups) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  // 1x1, 8 -> 8 in 2 groups of 4: OHWI w[o][c] = o + 1 for c == o % 4, else 0, so
  // y[o] = (o + 1) * x[(o / 4) * 4 + o % 4] = (o + 1) * x[o].
  std::vector<float> w(8 * 4, 0.0f), x(8);
  for (int o = 0; o < 8; ++o) w[o * 4 + o % 4] = static_cast<float>(o + 1);
  for (int c = 0; c < 8; ++c) x[c] = static_cast<float>(c) - 2.5f;
  FakesConvSource* source = ConvSource(1, 1, 8, 8, w);
  source->desc.groups = 2;
  MPSCNNConvolution* conv = [[MPSCNNConvolution alloc] initWithDevice:device weights:source];
  conv.accumulatorPrecisionOption = MPSNNConvolutionAccumulatorPrecisionOptionFloat;
  MPSImage* src = FloatImage(device, 1, 1, 8, x);
  MPSImage* dst = FloatImage(device, 1, 1, 8, {});
  RunConv(device, conv, src, dst);
  const std::vector<float> y = ReadHwc(dst);
  for (int o = 0; o < 8; ++o) EXPECT_EQ(y[o], (o + 1) * x[o]);
  EXPECT_DEATH(
      {
        FakesConvSource* s = ConvSource(1, 1, 6, 6, std::vector<float>(18));
        s->desc.groups = 2;
        (void)[[MPSCNNConvolution alloc] initWithDevice:MTLCreateSystemDefaultDevice() weights:s];
      },
      "multiple of 4");
}

TEST_F(Fakes, ConvolutionRefusesHalfAccumulationAndFailedLoads) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  FakesConvSource* failing = ConvSource(1, 1, 1, 1, {1.0f});
  failing->loadResult = NO;
  EXPECT_EQ([[MPSCNNConvolution alloc] initWithDevice:device weights:failing], nil);
  EXPECT_DEATH(
      {
        id<MTLDevice> dev = MTLCreateSystemDefaultDevice();
        MPSCNNConvolution* conv = [[MPSCNNConvolution alloc] initWithDevice:dev weights:ConvSource(1, 1, 1, 1, {1.0f})];
        [conv encodeToCommandBuffer:[[dev newCommandQueue] commandBuffer]
                        sourceImage:FloatImage(dev, 2, 2, 1, {1, 2, 3, 4})
                   destinationImage:FloatImage(dev, 2, 2, 1, {})];
      },
      "accumulatorPrecisionOption is Half");
  EXPECT_DEATH(
      {
        id<MTLDevice> dev = MTLCreateSystemDefaultDevice();
        MPSCNNConvolution* conv = [[MPSCNNConvolution alloc] initWithDevice:dev weights:ConvSource(1, 1, 2, 1, {1, 1})];
        conv.accumulatorPrecisionOption = MPSNNConvolutionAccumulatorPrecisionOptionFloat;
        [conv encodeToCommandBuffer:[[dev newCommandQueue] commandBuffer]
                        sourceImage:FloatImage(dev, 2, 2, 1, {1, 2, 3, 4})
                   destinationImage:FloatImage(dev, 2, 2, 1, {})];
      },
      "inputFeatureChannels is 2");
}

TEST_F(Fakes, ConvolutionGradientIsTheAdjointOfTheRecordedForward) {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  // 1 channel, 3x3 kernel, SAME (offset 1, 1) on 4x4: <dy, conv(x)> = <dx(dy), x> and
  // dw[k] = sum over outputs of dy * x at the tap; checked against Correlate.
  const int H = 4, W = 4;
  std::vector<float> x(H * W), dy(H * W), w(9);
  for (int i = 0; i < H * W; ++i) {
    x[i] = static_cast<float>((i * 5) % 7) - 3.0f;
    dy[i] = static_cast<float>((i * 3) % 5) - 2.0f;
  }
  for (int i = 0; i < 9; ++i) w[i] = static_cast<float>(i) - 4.0f;
  FakesConvSource* source = ConvSource(3, 3, 1, 1, w, {0.0f});
  MPSCNNConvolution* conv = [[MPSCNNConvolution alloc] initWithDevice:device weights:source];
  conv.offset = MPSOffset{1, 1, 0};
  MPSCNNConvolutionGradient* grad = [[MPSCNNConvolutionGradient alloc] initWithDevice:device weights:source];
  EXPECT_EQ(grad.gradientOption, MPSCNNConvolutionGradientOptionAll);
  MPSImage* xi = FloatImage(device, W, H, 1, x);
  MPSImage* dyi = FloatImage(device, W, H, 1, dy);
  MPSImage* dxi = FloatImage(device, W, H, 1, {});
  MPSCNNConvolutionGradientState* state = [conv resultStateForSourceImage:xi sourceStates:nil destinationImage:dyi];
  ASSERT_NE(state, nil);
  ASSERT_NE(state.gradientForWeights, nil);
  ASSERT_NE(state.gradientForBiases, nil);
  EXPECT_EQ(state.convolution, conv);
  id<MTLBuffer> dw = [device newBufferWithLength:9 * sizeof(float) options:MTLResourceStorageModeShared];
  id<MTLBuffer> db = [device newBufferWithLength:sizeof(float) options:MTLResourceStorageModeShared];
  id<MTLCommandBuffer> cb = [[device newCommandQueue] commandBuffer];
  [grad encodeToCommandBuffer:cb sourceGradient:dyi sourceImage:xi gradientState:state destinationGradient:dxi];
  [dxi synchronizeOnCommandBuffer:cb];
  id<MTLBlitCommandEncoder> blit = [cb blitCommandEncoder];
  [blit copyFromBuffer:state.gradientForWeights sourceOffset:0 toBuffer:dw destinationOffset:0 size:9 * sizeof(float)];
  [blit copyFromBuffer:state.gradientForBiases sourceOffset:0 toBuffer:db destinationOffset:0 size:sizeof(float)];
  [blit endEncoding];
  [cb commit];
  [cb waitUntilCompleted];
  // dw[k]: the forward with a one-hot kernel at k, dotted with dy.
  const std::vector<float> got_dw = Floats(dw, 0, 9);
  for (int k = 0; k < 9; ++k) {
    std::vector<float> onehot(9, 0.0f);
    onehot[k] = 1.0f;
    const std::vector<float> y = Correlate(x, H, W, onehot, 3, 3, 1, 1, 1, H, W, 0.0, false);
    double want = 0;
    for (int i = 0; i < H * W; ++i) want += double(y[i]) * dy[i];
    EXPECT_FLOAT_EQ(got_dw[k], static_cast<float>(want)) << "dw[" << k << "]";
  }
  double sum_dy = 0;
  for (float v : dy) sum_dy += v;
  EXPECT_FLOAT_EQ(Floats(db, 0, 1)[0], static_cast<float>(sum_dy));
  // dx[p]: the forward of a one-hot image at p, dotted with dy.
  const std::vector<float> got_dx = ReadHwc(dxi);
  for (int p = 0; p < H * W; ++p) {
    std::vector<float> onehot(H * W, 0.0f);
    onehot[p] = 1.0f;
    const std::vector<float> y = Correlate(onehot, H, W, w, 3, 3, 1, 1, 1, H, W, 0.0, false);
    double want = 0;
    for (int i = 0; i < H * W; ++i) want += double(y[i]) * dy[i];
    EXPECT_FLOAT_EQ(got_dx[p], static_cast<float>(want)) << "dx[" << p << "]";
  }
  EXPECT_DEATH(
      {
        FakesConvSource* s = ConvSource(1, 1, 1, 1, {1.0f});
        s->desc.fusedNeuronDescriptor = [MPSNNNeuronDescriptor cnnNeuronDescriptorWithType:MPSCNNNeuronTypeReLU];
        (void)[[MPSCNNConvolutionGradient alloc] initWithDevice:MTLCreateSystemDefaultDevice() weights:s];
      },
      "fused neuron");
}

}  // namespace
