// Declaration subset of Apple's Metal framework headers, for the type-check and the
// Linux emulation (see ../Foundation/Foundation.h). Selectors and types checked against
// developer.apple.com and Apple's SDK headers (MTLDevice, MTLResource, MTLBuffer, MTLEvent,
// MTLCommandQueue, MTLCommandBuffer, MTLCommandEncoder, MTLBlitCommandEncoder,
// MTLPixelFormat, MTLTexture); enum values checked against PyObjC's Metal metadata by
// tools/check_metal_enums.py.
#ifndef TFMPS_STUB_METAL_H_
#define TFMPS_STUB_METAL_H_

#include <stdint.h>

#import <Foundation/Foundation.h>

// MTLResource.h.
typedef NS_ENUM(NSUInteger, MTLCPUCacheMode) {
  MTLCPUCacheModeDefaultCache = 0,
  MTLCPUCacheModeWriteCombined = 1,
};

typedef NS_ENUM(NSUInteger, MTLStorageMode) {
  MTLStorageModeShared = 0,
  MTLStorageModeManaged = 1,
  MTLStorageModePrivate = 2,
};

// Apple writes these as MTLStorageMode/MTLCPUCacheMode values shifted by
// MTLResourceStorageModeShift (4) and MTLResourceCPUCacheModeShift (0).
typedef NS_OPTIONS(NSUInteger, MTLResourceOptions) {
  MTLResourceCPUCacheModeDefaultCache = 0,
  MTLResourceCPUCacheModeWriteCombined = 1UL << 0,
  MTLResourceStorageModeShared = 0UL << 4,
  MTLResourceStorageModeManaged = 1UL << 4,
  MTLResourceStorageModePrivate = 2UL << 4,
};

// Only the uncompressed, linear (not sRGB, not BGRA) formats that MPSImages of unorm8,
// float16 and float32 feature channels use; convert_metal.mm accepts no other.
typedef NS_ENUM(NSUInteger, MTLPixelFormat) {
  MTLPixelFormatInvalid = 0,
  MTLPixelFormatR8Unorm = 10,
  MTLPixelFormatR16Float = 25,
  MTLPixelFormatRG8Unorm = 30,
  MTLPixelFormatR32Float = 55,
  MTLPixelFormatRG16Float = 65,
  MTLPixelFormatRGBA8Unorm = 70,
  MTLPixelFormatRG32Float = 105,
  MTLPixelFormatRGBA16Float = 115,
  MTLPixelFormatRGBA32Float = 125,
};

// MTLTexture.h.
typedef NS_OPTIONS(NSUInteger, MTLTextureUsage) {
  MTLTextureUsageUnknown = 0x0000,
  MTLTextureUsageShaderRead = 0x0001,
  MTLTextureUsageShaderWrite = 0x0002,
  MTLTextureUsageRenderTarget = 0x0004,
  MTLTextureUsagePixelFormatView = 0x0010,
};

// MTLTypes.h.
typedef struct {
  NSUInteger x, y, z;
} MTLOrigin;
static inline MTLOrigin MTLOriginMake(NSUInteger x, NSUInteger y, NSUInteger z) {
  MTLOrigin o;
  o.x = x;
  o.y = y;
  o.z = z;
  return o;
}

// MTLCommandBuffer.h.
typedef NS_ENUM(NSUInteger, MTLCommandBufferStatus) {
  MTLCommandBufferStatusNotEnqueued = 0,
  MTLCommandBufferStatusEnqueued = 1,
  MTLCommandBufferStatusCommitted = 2,
  MTLCommandBufferStatusScheduled = 3,
  MTLCommandBufferStatusCompleted = 4,
  MTLCommandBufferStatusError = 5,
};

// The codes of a failed command buffer's error (domain MTLCommandBufferErrorDomain).
typedef NS_ENUM(NSUInteger, MTLCommandBufferError) {
  MTLCommandBufferErrorNone = 0,
  MTLCommandBufferErrorInternal = 1,
  MTLCommandBufferErrorTimeout = 2,
  MTLCommandBufferErrorPageFault = 3,
  MTLCommandBufferErrorOutOfMemory = 8,
  MTLCommandBufferErrorInvalidResource = 9,
};
extern "C" NSErrorDomain const MTLCommandBufferErrorDomain;

// MTLTypes.h: a 3-D extent of threads or threadgroups.
typedef struct {
  NSUInteger width, height, depth;
} MTLSize;
inline MTLSize MTLSizeMake(NSUInteger width, NSUInteger height, NSUInteger depth) {
  MTLSize size = {width, height, depth};
  return size;
}

// MTLLibrary.h (macOS 15+): whether the compiler may transform floating-point math in
// ways that change results (Safe: none, so no a*b+c contracted into an fma).
typedef NS_ENUM(NSInteger, MTLMathMode) {
  MTLMathModeSafe = 0,
  MTLMathModeRelaxed = 1,
  MTLMathModeFast = 2,
};

@protocol MTLBuffer;
@protocol MTLCommandBuffer;
@protocol MTLComputePipelineState;
@protocol MTLFunction;
@protocol MTLLibrary;
@protocol MTLCommandQueue;
@protocol MTLSharedEvent;

// MTLLibrary.h.
@interface MTLCompileOptions : NSObject <NSCopying>
// Deprecated in macOS 15 in favour of mathMode; the only switch before it.
@property(readwrite, nonatomic) BOOL fastMathEnabled;
// macOS 15+.
@property(readwrite, nonatomic) MTLMathMode mathMode;
@end

@protocol MTLFunction <NSObject>
@property(readonly) NSString* name;
@end

@protocol MTLLibrary <NSObject>
- (id<MTLFunction>)newFunctionWithName:(NSString*)functionName;
@end

// MTLComputePipeline.h.
@protocol MTLComputePipelineState <NSObject>
@property(readonly) NSUInteger maxTotalThreadsPerThreadgroup;
@property(readonly) NSUInteger threadExecutionWidth;
@end

@protocol MTLDevice <NSObject>
@property(readonly) NSString* name;
// macOS 10.15+: whether the CPU and the GPU share memory (Apple silicon).
@property(readonly) BOOL hasUnifiedMemory;
// macOS 10.14+.
@property(readonly) NSUInteger maxBufferLength;
// macOS 10.12+: how much memory the device can use without hurting performance.
@property(readonly) uint64_t recommendedMaxWorkingSetSize;
- (id<MTLCommandQueue>)newCommandQueue;
// "Creates a buffer the method clears with zero values."
- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options;
- (id<MTLBuffer>)newBufferWithBytes:(const void*)pointer
                             length:(NSUInteger)length
                            options:(MTLResourceOptions)options;
// macOS 10.14+.
- (id<MTLSharedEvent>)newSharedEvent;
// MTLDevice.h: compiles Metal Shading Language source at run time (nil and *error on
// failure).
- (id<MTLLibrary>)newLibraryWithSource:(NSString*)source
                               options:(MTLCompileOptions*)options
                                 error:(NSError* __autoreleasing*)error;
- (id<MTLComputePipelineState>)newComputePipelineStateWithFunction:(id<MTLFunction>)computeFunction
                                                             error:(NSError* __autoreleasing*)error;
@end

@protocol MTLResource <NSObject>
@property(readonly) id<MTLDevice> device;
@property(copy, atomic) NSString* label;
@property(readonly) MTLCPUCacheMode cpuCacheMode;
@property(readonly) MTLStorageMode storageMode;
@end

@protocol MTLBuffer <MTLResource>
// NULL for private storage: the CPU cannot address it.
- (void*)contents NS_RETURNS_INNER_POINTER;
@property(readonly) NSUInteger length;
@end

// MTLEvent.h, macOS 10.14+.
@protocol MTLEvent <NSObject>
@property(readonly) id<MTLDevice> device;
@property(copy, atomic) NSString* label;
@end

@protocol MTLSharedEvent <MTLEvent>
// Setting it from the CPU signals the event; it only ever grows ("its value is changed
// only if you provide a larger value than the value currently stored").
@property(readwrite) uint64_t signaledValue;
// macOS 12+: YES once signaledValue >= value, NO after the timeout.
- (BOOL)waitUntilSignaledValue:(uint64_t)value timeoutMS:(uint64_t)milliseconds;
@end

// MTLCommandEncoder.h.
@protocol MTLCommandEncoder <NSObject>
@property(readonly) id<MTLDevice> device;
@property(copy, atomic) NSString* label;
- (void)endEncoding;
@end

// MTLBlitCommandEncoder.h. On macOS, offsets and sizes must be multiples of 4.
@protocol MTLBlitCommandEncoder <MTLCommandEncoder>
- (void)copyFromBuffer:(id<MTLBuffer>)sourceBuffer
          sourceOffset:(NSUInteger)sourceOffset
              toBuffer:(id<MTLBuffer>)destinationBuffer
     destinationOffset:(NSUInteger)destinationOffset
                  size:(NSUInteger)size;
- (void)fillBuffer:(id<MTLBuffer>)buffer range:(NSRange)range value:(uint8_t)value;
@end

// MTLComputeCommandEncoder.h.
@protocol MTLComputeCommandEncoder <MTLCommandEncoder>
- (void)setComputePipelineState:(id<MTLComputePipelineState>)state;
// At most 4 KB, copied at once.
- (void)setBytes:(const void*)bytes length:(NSUInteger)length atIndex:(NSUInteger)index;
- (void)setBuffer:(id<MTLBuffer>)buffer offset:(NSUInteger)offset atIndex:(NSUInteger)index;
// Non-uniform threadgroups (Apple GPU families 4+, Mac family 2).
- (void)dispatchThreads:(MTLSize)threadsPerGrid threadsPerThreadgroup:(MTLSize)threadsPerThreadgroup;
- (void)dispatchThreadgroups:(MTLSize)threadgroupsPerGrid threadsPerThreadgroup:(MTLSize)threadsPerThreadgroup;
@end

@protocol MTLCommandQueue <NSObject>
@property(readonly) id<MTLDevice> device;
@property(copy, atomic) NSString* label;
- (id<MTLCommandBuffer>)commandBuffer;
@end

typedef void (^MTLCommandBufferHandler)(id<MTLCommandBuffer>);

@protocol MTLCommandBuffer <NSObject>
@property(readonly) id<MTLDevice> device;
@property(readonly) id<MTLCommandQueue> commandQueue;
@property(copy, atomic) NSString* label;
- (void)enqueue;
- (void)commit;
// Both handler kinds may only be added before commit.
- (void)addScheduledHandler:(MTLCommandBufferHandler)block;
- (void)waitUntilScheduled;
- (void)addCompletedHandler:(MTLCommandBufferHandler)block;
- (void)waitUntilCompleted;
@property(readonly) MTLCommandBufferStatus status;
@property(readonly) NSError* error;
- (id<MTLBlitCommandEncoder>)blitCommandEncoder;
- (id<MTLComputeCommandEncoder>)computeCommandEncoder;
// macOS 10.14+.
- (void)encodeSignalEvent:(id<MTLEvent>)event value:(uint64_t)value;
- (void)encodeWaitForEvent:(id<MTLEvent>)event value:(uint64_t)value;
@end

extern "C" id<MTLDevice> MTLCreateSystemDefaultDevice(void) NS_RETURNS_RETAINED;
// macOS 10.11+: every Metal device, without switching the system's GPU.
extern "C" NSArray<id<MTLDevice>>* MTLCopyAllDevices(void) NS_RETURNS_RETAINED;

#endif  // TFMPS_STUB_METAL_H_
