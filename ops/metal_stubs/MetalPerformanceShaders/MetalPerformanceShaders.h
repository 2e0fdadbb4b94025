// Declaration subset of Apple's MetalPerformanceShaders headers (MPSCore: MPSCoreTypes.h,
// MPSImage.h; MPSMatrix: MPSMatrixTypes.h; MPSImage: MPSImageCopy.h;
// MPSNeuralNetwork/MPSNNOptimizers.h), for type-checking only (see
// ../Foundation/Foundation.h). Selectors and argument types checked against
// developer.apple.com and Apple's headers; enum values checked against PyObjC's
// MetalPerformanceShaders metadata by tools/check_metal_enums.py.
#ifndef TFMPS_STUB_METALPERFORMANCESHADERS_H_
#define TFMPS_STUB_METALPERFORMANCESHADERS_H_

#include <stdint.h>

#import <Metal/Metal.h>

typedef NS_ENUM(uint32_t, MPSDataType) {
  MPSDataTypeFloatBit = 0x10000000,
  MPSDataTypeFloat32 = MPSDataTypeFloatBit | 32,
  MPSDataTypeFloat16 = MPSDataTypeFloatBit | 16,
  MPSDataTypeNormalizedBit = 0x40000000,
  MPSDataTypeUnorm8 = MPSDataTypeNormalizedBit | 8,
};

// The storage of one feature channel of an MPSImage.
typedef NS_ENUM(NSUInteger, MPSImageFeatureChannelFormat) {
  MPSImageFeatureChannelFormatNone = 0,
  MPSImageFeatureChannelFormatUnorm8 = 1,
  MPSImageFeatureChannelFormatUnorm16 = 2,
  MPSImageFeatureChannelFormatFloat16 = 3,
  MPSImageFeatureChannelFormatFloat32 = 4,
};

// Memory order of one image: [height][width][featureChannels] or
// [featureChannels][height][width] (MPSImage.h); macOS 10.13+.
typedef NS_ENUM(NSUInteger, MPSDataLayout) {
  MPSDataLayoutHeightxWidthxFeatureChannels = 0,
  MPSDataLayoutFeatureChannelsxHeightxWidth = 1,
};

typedef NS_ENUM(NSUInteger, MPSNNRegularizationType) {
  MPSNNRegularizationTypeNone = 0,
  MPSNNRegularizationTypeL1 = 1,
  MPSNNRegularizationTypeL2 = 2,
};

@interface MPSKernel : NSObject
- (instancetype)initWithDevice:(id<MTLDevice>)device;
@end

@interface MPSVectorDescriptor : NSObject
+ (MPSVectorDescriptor*)vectorDescriptorWithLength:(NSUInteger)length
                                          dataType:(MPSDataType)dataType;
@end

@interface MPSVector : NSObject
// macOS 10.15+.
- (instancetype)initWithBuffer:(id<MTLBuffer>)buffer
                        offset:(NSUInteger)offset
                    descriptor:(MPSVectorDescriptor*)descriptor;
@end

@interface MPSMatrixDescriptor : NSObject
// macOS 10.13+. rowBytes must be a multiple of the element size.
+ (instancetype)matrixDescriptorWithRows:(NSUInteger)rows
                                 columns:(NSUInteger)columns
                                rowBytes:(NSUInteger)rowBytes
                                dataType:(MPSDataType)dataType;
@end

@interface MPSMatrix : NSObject
// macOS 10.15+.
- (instancetype)initWithBuffer:(id<MTLBuffer>)buffer
                        offset:(NSUInteger)offset
                    descriptor:(MPSMatrixDescriptor*)descriptor;
@end

@interface MPSImage : NSObject
@property(readonly, nonatomic) NSUInteger width;
@property(readonly, nonatomic) NSUInteger height;
@property(readonly, nonatomic) NSUInteger featureChannels;
@property(readonly, nonatomic) NSUInteger numberOfImages;
@property(readonly, nonatomic) MTLPixelFormat pixelFormat;
@property(readonly, nonatomic) MPSImageFeatureChannelFormat featureChannelFormat;
// macOS 10.13+: the whole image `imageIndex`, no conversion (the memory type is the
// texture's).
- (void)readBytes:(void*)dataBytes
       dataLayout:(MPSDataLayout)dataLayout
       imageIndex:(NSUInteger)imageIndex;
- (void)writeBytes:(const void*)dataBytes
        dataLayout:(MPSDataLayout)dataLayout
        imageIndex:(NSUInteger)imageIndex;
// macOS 10.13.4+: a blit that updates the CPU copy of a managed texture; nothing for
// other storage modes.
- (void)synchronizeOnCommandBuffer:(id<MTLCommandBuffer>)commandBuffer;
@end

// macOS 10.13+.
@interface MPSImageCopyToMatrix : MPSKernel
- (instancetype)initWithDevice:(id<MTLDevice>)device dataLayout:(MPSDataLayout)dataLayout;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
            destinationMatrix:(MPSMatrix*)destinationMatrix;
@end

// macOS 10.14+.
@interface MPSMatrixCopyToImage : MPSKernel
- (instancetype)initWithDevice:(id<MTLDevice>)device dataLayout:(MPSDataLayout)dataLayout;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                 sourceMatrix:(MPSMatrix*)sourceMatrix
             destinationImage:(MPSImage*)destinationImage;
@end

@interface MPSNNOptimizerDescriptor : NSObject
+ (instancetype)optimizerDescriptorWithLearningRate:(float)learningRate
                                    gradientRescale:(float)gradientRescale
                              applyGradientClipping:(BOOL)applyGradientClipping
                                    gradientClipMax:(float)gradientClipMax
                                    gradientClipMin:(float)gradientClipMin
                                 regularizationType:(MPSNNRegularizationType)regularizationType
                                regularizationScale:(float)regularizationScale;
@end

@interface MPSNNOptimizer : MPSKernel
@property(readonly, nonatomic) float learningRate;
- (instancetype)initWithDevice:(id<MTLDevice>)device NS_UNAVAILABLE;
- (void)setLearningRate:(float)newLearningRate;
@end

@interface MPSNNOptimizerAdam : MPSNNOptimizer
// Number of updates so far: each encode first does t = t + 1 (MPSNNOptimizers.h).
@property(readwrite, nonatomic) NSUInteger timeStep;
- (instancetype)initWithDevice:(id<MTLDevice>)device
                         beta1:(double)beta1
                         beta2:(double)beta2
                       epsilon:(float)epsilon
                      timeStep:(NSUInteger)timeStep
           optimizerDescriptor:(MPSNNOptimizerDescriptor*)optimizerDescriptor;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
          inputGradientVector:(MPSVector*)inputGradientVector
            inputValuesVector:(MPSVector*)inputValuesVector
          inputMomentumVector:(MPSVector*)inputMomentumVector
          inputVelocityVector:(MPSVector*)inputVelocityVector
           resultValuesVector:(MPSVector*)resultValuesVector;
// AMSGrad, macOS 10.15+.
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
          inputGradientVector:(MPSVector*)inputGradientVector
            inputValuesVector:(MPSVector*)inputValuesVector
          inputMomentumVector:(MPSVector*)inputMomentumVector
          inputVelocityVector:(MPSVector*)inputVelocityVector
        maximumVelocityVector:(MPSVector*)maximumVelocityVector
           resultValuesVector:(MPSVector*)resultValuesVector;
@end

@interface MPSNNOptimizerStochasticGradientDescent : MPSNNOptimizer
// macOS 11+ spelling; macOS 10.14 shipped it as ...useNestrovMomentum:..., which the SDK
// still declares.
- (instancetype)initWithDevice:(id<MTLDevice>)device
                 momentumScale:(float)momentumScale
           useNesterovMomentum:(BOOL)useNesterovMomentum
           optimizerDescriptor:(MPSNNOptimizerDescriptor*)optimizerDescriptor;
// inputMomentumVector may be nil: then variable -= learningRate * g.
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
          inputGradientVector:(MPSVector*)inputGradientVector
            inputValuesVector:(MPSVector*)inputValuesVector
          inputMomentumVector:(MPSVector*)inputMomentumVector
           resultValuesVector:(MPSVector*)resultValuesVector;
@end

@interface MPSNNOptimizerRMSProp : MPSNNOptimizer
- (instancetype)initWithDevice:(id<MTLDevice>)device
                         decay:(double)decay
                       epsilon:(float)epsilon
           optimizerDescriptor:(MPSNNOptimizerDescriptor*)optimizerDescriptor;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
          inputGradientVector:(MPSVector*)inputGradientVector
            inputValuesVector:(MPSVector*)inputValuesVector
      inputSumOfSquaresVector:(MPSVector*)inputSumOfSquaresVector
           resultValuesVector:(MPSVector*)resultValuesVector;
@end

#endif  // TFMPS_STUB_METALPERFORMANCESHADERS_H_
