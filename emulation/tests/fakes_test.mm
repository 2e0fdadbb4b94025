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

}  // namespace
