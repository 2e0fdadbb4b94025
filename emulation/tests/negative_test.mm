// Deliberately wrong Metal code, kept as tests: each mistake must be caught by the
// emulation (a wrong result under the debug mode, a validation abort, a live-object
// count), so that the same mistake in the project's .mm files cannot pass the tests.
// Run plain and with TFMPS_METAL_EMU_DEBUG=1 (tests/test_metal_emulation.py); the
// timing-dependent ones assert only under the debug mode, where the worker delays every
// command buffer by 0.2-3 ms.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "emulation/metal/metal_emu.h"
#include "emulation/runtime/objc_emu.h"

namespace {

bool DebugMode() { return EmuDebugLevel() >= 1; }

class NegativeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    live_ = objc_emu_live_objects();
    @autoreleasepool {
      device_ = MTLCreateSystemDefaultDevice();
      queue_ = [device_ newCommandQueue];
    }
  }
  void TearDown() override {
    @autoreleasepool {
      device_ = nil;
      queue_ = nil;
    }
    EmuResetHooks();
    EXPECT_EQ(objc_emu_live_objects(), live_) << "objects leaked";
  }
  id<MTLBuffer> Floats(size_t n, float value) {
    id<MTLBuffer> b = [device_ newBufferWithLength:n * sizeof(float) options:MTLResourceStorageModeShared];
    float* p = static_cast<float*>([b contents]);
    for (size_t i = 0; i < n; ++i) p[i] = value;
    return b;
  }
  MPSVector* Vector(id<MTLBuffer> b, size_t offset, size_t n) {
    MPSVectorDescriptor* d = [MPSVectorDescriptor vectorDescriptorWithLength:n dataType:MPSDataTypeFloat32];
    return [[MPSVector alloc] initWithBuffer:b offset:offset descriptor:d];
  }
  // w -= 1 * g on the GPU: an SGD step of learning rate 1.
  MPSNNOptimizerStochasticGradientDescent* MakeSgd() {
    MPSNNOptimizerDescriptor* desc =
        [MPSNNOptimizerDescriptor optimizerDescriptorWithLearningRate:1.0f
                                                      gradientRescale:1.0f
                                                applyGradientClipping:NO
                                                      gradientClipMax:0
                                                      gradientClipMin:0
                                                   regularizationType:MPSNNRegularizationTypeNone
                                                  regularizationScale:0];
    MPSNNOptimizerStochasticGradientDescent* sgd =
        [[MPSNNOptimizerStochasticGradientDescent alloc] initWithDevice:device_
                                                          momentumScale:0
                                                    useNesterovMomentum:NO
                                                    optimizerDescriptor:desc];
    return sgd;
  }
  id<MTLCommandBuffer> EncodeSgd(id<MTLCommandQueue> queue, id<MTLBuffer> w, id<MTLBuffer> g, size_t n) {
    MPSNNOptimizerStochasticGradientDescent* sgd = MakeSgd();
    id<MTLCommandBuffer> cb = [queue commandBuffer];
    MPSVector* wv = Vector(w, 0, n);
    [sgd encodeToCommandBuffer:cb
           inputGradientVector:Vector(g, 0, n)
             inputValuesVector:wv
           inputMomentumVector:nil
            resultValuesVector:wv];
    return cb;
  }
  id<MTLDevice> device_;
  id<MTLCommandQueue> queue_;
  int64_t live_ = 0;
};

TEST_F(NegativeTest, AReadBeforeTheWaitSeesStaleData) {
  @autoreleasepool {
    id<MTLBuffer> w = Floats(256, 1.0f);
    id<MTLBuffer> g = Floats(256, 0.5f);
    id<MTLCommandBuffer> cb = EncodeSgd(queue_, w, g, 256);
    [cb commit];
    const float early = static_cast<float*>([w contents])[0];  // WRONG: no wait
    if (DebugMode()) EXPECT_EQ(early, 1.0f) << "the debug mode's delay should expose the missing wait";
    [cb waitUntilCompleted];
    EXPECT_EQ(static_cast<float*>([w contents])[0], 0.5f);  // right: after the wait
  }
}

TEST_F(NegativeTest, AMissingDependencyBetweenQueuesIsExposed) {
  @autoreleasepool {
    id<MTLCommandQueue> other = [device_ newCommandQueue];
    id<MTLBuffer> w = Floats(64, 1.0f);
    id<MTLBuffer> g = Floats(64, 0.25f);
    id<MTLBuffer> copy = Floats(64, 0.0f);
    id<MTLCommandBuffer> write = EncodeSgd(queue_, w, g, 64);
    // WRONG: the copy on the other queue does not wait for the write (no shared event).
    id<MTLCommandBuffer> read = [other commandBuffer];
    id<MTLBlitCommandEncoder> blit = [read blitCommandEncoder];
    [blit copyFromBuffer:w sourceOffset:0 toBuffer:copy destinationOffset:0 size:64 * sizeof(float)];
    [blit endEncoding];
    [read commit];
    [read waitUntilCompleted];
    [write commit];
    [write waitUntilCompleted];
    EXPECT_EQ(static_cast<float*>([copy contents])[0], 1.0f) << "read before the write ran";
    // Right: an event orders the copy after the write.
    id<MTLSharedEvent> event = [device_ newSharedEvent];
    id<MTLCommandBuffer> write2 = EncodeSgd(queue_, w, g, 64);
    [write2 encodeSignalEvent:event value:1];
    id<MTLCommandBuffer> read2 = [other commandBuffer];
    [read2 encodeWaitForEvent:event value:1];
    id<MTLBlitCommandEncoder> blit2 = [read2 blitCommandEncoder];
    [blit2 copyFromBuffer:w sourceOffset:0 toBuffer:copy destinationOffset:0 size:64 * sizeof(float)];
    [blit2 endEncoding];
    [read2 commit];
    [write2 commit];
    [read2 waitUntilCompleted];
    EXPECT_EQ(static_cast<float*>([copy contents])[0], 0.5f);
  }
}

TEST_F(NegativeTest, UninitializedImageStorageIsNaNUnderTheDebugMode) {
  @autoreleasepool {
    MPSImageDescriptor* d = [MPSImageDescriptor imageDescriptorWithChannelFormat:MPSImageFeatureChannelFormatFloat32
                                                                           width:2
                                                                          height:2
                                                                 featureChannels:4
                                                                  numberOfImages:1
                                                                           usage:MTLTextureUsageShaderRead];
    MPSImage* image = [[MPSImage alloc] initWithDevice:device_ imageDescriptor:d];
    float out[16];
    [image readBytes:out dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:0];  // WRONG: never written
    if (DebugMode()) {
      EXPECT_TRUE(std::isnan(out[0])) << "a read of unwritten image storage should see the NaN fill";
    }
  }
}

using NegativeDeathTest = NegativeTest;

TEST_F(NegativeDeathTest, AVectorPastTheEndOfItsBufferFailsValidation) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        @autoreleasepool {
          id<MTLBuffer> w = Floats(16, 1.0f);
          MPSVector* v = Vector(w, 16, 16);  // WRONG: offset 16 bytes + 64 bytes > 64
          id<MTLBuffer> g = Floats(16, 1.0f);
          MPSNNOptimizerStochasticGradientDescent* sgd = MakeSgd();
          id<MTLCommandBuffer> cb = [queue_ commandBuffer];
          [sgd encodeToCommandBuffer:cb
                 inputGradientVector:Vector(g, 0, 16)
                   inputValuesVector:v
                 inputMomentumVector:nil
                  resultValuesVector:v];
          [cb commit];
          [cb waitUntilCompleted];
        }
      },
      "failed assertion");
}

TEST_F(NegativeDeathTest, AMisalignedVectorOffsetFailsValidation) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        @autoreleasepool {
          id<MTLBuffer> w = Floats(16, 1.0f);
          MPSVector* v = Vector(w, 2, 8);  // WRONG: not a multiple of the element size
          (void)v;
        }
      },
      "failed assertion");
}

// A compute dispatch whose arguments do not cover what the kernel reads.
void DispatchSgd(id<MTLDevice> device, id<MTLCommandQueue> queue, bool bind_all, size_t args_bytes) {
  @autoreleasepool {
    NSError* error = nil;
    id<MTLLibrary> lib = [device newLibraryWithSource:@"kernel void tfmps_sgd_f32(...)" options:nil error:&error];
    id<MTLFunction> f = [lib newFunctionWithName:@"tfmps_sgd_f32"];
    id<MTLComputePipelineState> pipeline = [device newComputePipelineStateWithFunction:f error:&error];
    id<MTLBuffer> b = [device newBufferWithLength:64 options:MTLResourceStorageModeShared];
    id<MTLCommandBuffer> cb = [queue commandBuffer];
    id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
    [enc setComputePipelineState:pipeline];
    [enc setBuffer:b offset:0 atIndex:0];
    if (bind_all) [enc setBuffer:b offset:0 atIndex:1];  // WRONG when false: index 1 unbound
    [enc setBuffer:b offset:0 atIndex:2];
    char args[64] = {};
    [enc setBytes:args length:args_bytes atIndex:3];  // WRONG when shorter than the struct
    [enc dispatchThreads:MTLSizeMake(4, 1, 1) threadsPerThreadgroup:MTLSizeMake(4, 1, 1)];
    [enc endEncoding];
    [cb commit];
    [cb waitUntilCompleted];
  }
}

TEST_F(NegativeDeathTest, AKernelArgumentLeftUnboundFailsValidation) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(DispatchSgd(device_, queue_, /*bind_all=*/false, 40), "buffer argument 1 is not bound");
}

TEST_F(NegativeDeathTest, ATooShortArgumentStructFailsValidation) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(DispatchSgd(device_, queue_, /*bind_all=*/true, 8), "the kernel reads at least");
}

TEST_F(NegativeTest, AComputeDispatchWithEveryArgumentRuns) {
  DispatchSgd(device_, queue_, /*bind_all=*/true, 48);  // zero args: n = 0, nothing written
}

TEST_F(NegativeTest, ALeakedObjectShowsInTheLiveCount) {
  static id<MTLBuffer> leaked __attribute__((used));  // WRONG: a reference nobody clears
  const int64_t before = objc_emu_live_objects();
  @autoreleasepool {
    leaked = Floats(4, 0.0f);
    EXPECT_NE(leaked, nil);
  }
  EXPECT_EQ(objc_emu_live_objects(), before + 1) << "the live count should show the leak";
  leaked = nil;  // undo, so the fixture's own leak check passes
}

}  // namespace
