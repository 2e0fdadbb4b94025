// Declaration subset of Apple's Metal framework headers, for type-checking only (see
// ../Foundation/Foundation.h). Selectors and types checked against developer.apple.com
// (MTLDevice, MTLBuffer, MTLCommandQueue, MTLCommandBuffer, MTLPixelFormat); enum values
// checked against PyObjC's Metal metadata by tools/check_metal_enums.py.
#ifndef TFMPS_STUB_METAL_H_
#define TFMPS_STUB_METAL_H_

#import <Foundation/Foundation.h>

// Apple writes these as MTLStorageMode/MTLCPUCacheMode values shifted by
// MTLResourceStorageModeShift (4) and MTLResourceCPUCacheModeShift (0).
typedef NS_OPTIONS(NSUInteger, MTLResourceOptions) {
  MTLResourceCPUCacheModeDefaultCache = 0,
  MTLResourceStorageModeShared = 0UL << 4,
  MTLResourceStorageModeManaged = 1UL << 4,
  MTLResourceStorageModePrivate = 2UL << 4,
};

// Only the uncompressed, linear (not sRGB, not BGRA) formats that MPSImages of unorm8,
// float16 and float32 feature channels use; convert_metal.mm accepts no other.
typedef NS_ENUM(NSUInteger, MTLPixelFormat) {
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

typedef NS_ENUM(NSUInteger, MTLCommandBufferStatus) {
  MTLCommandBufferStatusNotEnqueued = 0,
  MTLCommandBufferStatusEnqueued = 1,
  MTLCommandBufferStatusCommitted = 2,
  MTLCommandBufferStatusScheduled = 3,
  MTLCommandBufferStatusCompleted = 4,
  MTLCommandBufferStatusError = 5,
};

@protocol MTLBuffer;
@protocol MTLCommandBuffer;
@protocol MTLCommandQueue;

@protocol MTLDevice <NSObject>
- (id<MTLCommandQueue>)newCommandQueue;
- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options;
@end

@protocol MTLResource <NSObject>
@end

@protocol MTLBuffer <MTLResource>
- (void*)contents NS_RETURNS_INNER_POINTER;
@property(readonly) NSUInteger length;
@end

@protocol MTLCommandQueue <NSObject>
- (id<MTLCommandBuffer>)commandBuffer;
@end

@protocol MTLCommandBuffer <NSObject>
- (void)commit;
- (void)waitUntilCompleted;
@property(readonly) MTLCommandBufferStatus status;
@property(readonly) NSError* error;
@end

extern "C" id<MTLDevice> MTLCreateSystemDefaultDevice(void) NS_RETURNS_RETAINED;

#endif  // TFMPS_STUB_METAL_H_
