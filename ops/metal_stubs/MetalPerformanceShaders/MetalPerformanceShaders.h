// Declaration subset of Apple's MetalPerformanceShaders headers (MPSCore: MPSCoreTypes.h,
// MPSKernel.h, MPSImage.h; MPSMatrix: MPSMatrixTypes.h, MPSMatrixMultiplication.h;
// MPSImage: MPSImageCopy.h;
// MPSNeuralNetwork/MPSNNOptimizers.h), for the type-check and the Linux emulation (see
// ../Foundation/Foundation.h). Selectors and argument types checked against
// developer.apple.com and Apple's headers; enum values checked against PyObjC's
// MetalPerformanceShaders metadata by tools/check_metal_enums.py.
#ifndef TFMPS_STUB_METALPERFORMANCESHADERS_H_
#define TFMPS_STUB_METALPERFORMANCESHADERS_H_

#include <stddef.h>
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

// MPSKernel.h: whether MPS runs on `device` at all (macOS 10.13+).
extern "C" BOOL MPSSupportsMTLDevice(id<MTLDevice> device);

@interface MPSKernel : NSObject <NSCopying>
@property(readonly, retain, nonatomic) id<MTLDevice> device;
@property(copy, atomic) NSString* label;
- (instancetype)initWithDevice:(id<MTLDevice>)device;
@end

@interface MPSVectorDescriptor : NSObject
@property(readwrite, nonatomic) NSUInteger length;
@property(readonly, nonatomic) NSUInteger vectors;
@property(readwrite, nonatomic) MPSDataType dataType;
@property(readonly, nonatomic) NSUInteger vectorBytes;
+ (MPSVectorDescriptor*)vectorDescriptorWithLength:(NSUInteger)length
                                          dataType:(MPSDataType)dataType;
@end

@interface MPSVector : NSObject
@property(readonly, retain, nonatomic) id<MTLDevice> device;
@property(readonly, nonatomic) NSUInteger length;
@property(readonly, nonatomic) NSUInteger vectors;
@property(readonly, nonatomic) MPSDataType dataType;
@property(readonly, nonatomic) NSUInteger vectorBytes;
// macOS 10.15+.
@property(readonly, nonatomic) NSUInteger offset;
@property(readonly, nonatomic) id<MTLBuffer> data;
- (instancetype)initWithBuffer:(id<MTLBuffer>)buffer descriptor:(MPSVectorDescriptor*)descriptor;
// macOS 10.15+.
- (instancetype)initWithBuffer:(id<MTLBuffer>)buffer
                        offset:(NSUInteger)offset
                    descriptor:(MPSVectorDescriptor*)descriptor;
@end

@interface MPSMatrixDescriptor : NSObject
@property(readwrite, nonatomic) NSUInteger rows;
@property(readwrite, nonatomic) NSUInteger columns;
@property(readonly, nonatomic) NSUInteger matrices;
@property(readwrite, nonatomic) MPSDataType dataType;
@property(readwrite, nonatomic) NSUInteger rowBytes;
@property(readonly, nonatomic) NSUInteger matrixBytes;
// macOS 10.13+. rowBytes must be a multiple of the element size.
+ (instancetype)matrixDescriptorWithRows:(NSUInteger)rows
                                 columns:(NSUInteger)columns
                                rowBytes:(NSUInteger)rowBytes
                                dataType:(MPSDataType)dataType;
// macOS 10.13+: `matrices` matrices, matrixBytes apart; matrixBytes must be a multiple of
// rowBytes (and at least rows * rowBytes, MPSMatrix.h).
+ (instancetype)matrixDescriptorWithRows:(NSUInteger)rows
                                 columns:(NSUInteger)columns
                                matrices:(NSUInteger)matrices
                                rowBytes:(NSUInteger)rowBytes
                             matrixBytes:(NSUInteger)matrixBytes
                                dataType:(MPSDataType)dataType;
// The recommended (not required) rowBytes for performance.
+ (size_t)rowBytesForColumns:(NSUInteger)columns dataType:(MPSDataType)dataType;
@end

@interface MPSMatrix : NSObject
@property(readonly, retain, nonatomic) id<MTLDevice> device;
@property(readonly, nonatomic) NSUInteger rows;
@property(readonly, nonatomic) NSUInteger columns;
@property(readonly, nonatomic) NSUInteger matrices;
@property(readonly, nonatomic) MPSDataType dataType;
@property(readonly, nonatomic) NSUInteger rowBytes;
@property(readonly, nonatomic) NSUInteger matrixBytes;
// macOS 10.15+.
@property(readonly, nonatomic) NSUInteger offset;
@property(readonly, nonatomic) id<MTLBuffer> data;
// The buffer must hold (rows-1)*rowBytes + columns*(element size) bytes.
- (instancetype)initWithBuffer:(id<MTLBuffer>)buffer descriptor:(MPSMatrixDescriptor*)descriptor;
// macOS 10.15+.
- (instancetype)initWithBuffer:(id<MTLBuffer>)buffer
                        offset:(NSUInteger)offset
                    descriptor:(MPSMatrixDescriptor*)descriptor;
@end

// MPSMatrixMultiplication.h (macOS 10.13+): C = alpha * op(A) * op(B) + beta * C, where A,
// B, C are the left, right and result matrices and op(X) is X or X**T. From its origin
// (z must be 0), the left matrix must hold resultRows x interiorColumns elements of op(A),
// the right one interiorColumns x resultColumns of op(B), the result resultRows x
// resultColumns. Each matrix index in [batchStart, batchStart + batchSize) is processed.
@interface MPSMatrixMultiplication : MPSKernel
// Where the kernel starts writing (and reading, for beta != 0); default 0, 0, 0.
@property(readwrite, nonatomic) MTLOrigin resultMatrixOrigin;
@property(readwrite, nonatomic) MTLOrigin leftMatrixOrigin;
@property(readwrite, nonatomic) MTLOrigin rightMatrixOrigin;
// The first matrix of the batch (default 0).
@property(readwrite, nonatomic) NSUInteger batchStart;
// By default, all matrices available at encoding time.
@property(readwrite, nonatomic) NSUInteger batchSize;
// alpha and beta are converted to the matrices' precision.
- (instancetype)initWithDevice:(id<MTLDevice>)device
                 transposeLeft:(BOOL)transposeLeft
                transposeRight:(BOOL)transposeRight
                    resultRows:(NSUInteger)resultRows
                 resultColumns:(NSUInteger)resultColumns
               interiorColumns:(NSUInteger)interiorColumns
                         alpha:(double)alpha
                          beta:(double)beta;
// No transposes, alpha 1, beta 0.
- (instancetype)initWithDevice:(id<MTLDevice>)device
                    resultRows:(NSUInteger)resultRows
                 resultColumns:(NSUInteger)resultColumns
               interiorColumns:(NSUInteger)interiorColumns;
- (instancetype)initWithDevice:(id<MTLDevice>)device NS_UNAVAILABLE;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                   leftMatrix:(MPSMatrix*)leftMatrix
                  rightMatrix:(MPSMatrix*)rightMatrix
                 resultMatrix:(MPSMatrix*)resultMatrix;
@end

// MPSImage.h (macOS 10.13+): what an MPSImage is made from.
@interface MPSImageDescriptor : NSObject <NSCopying>
@property(readwrite, nonatomic) NSUInteger width;
@property(readwrite, nonatomic) NSUInteger height;
@property(readwrite, nonatomic) NSUInteger featureChannels;
@property(readwrite, nonatomic) NSUInteger numberOfImages;
// Derived from channelFormat and featureChannels.
@property(readonly, nonatomic) MTLPixelFormat pixelFormat;
@property(readwrite, nonatomic) MPSImageFeatureChannelFormat channelFormat;
@property(readwrite, nonatomic) MTLCPUCacheMode cpuCacheMode;
@property(readwrite, nonatomic) MTLStorageMode storageMode;
@property(readwrite, nonatomic) MTLTextureUsage usage;
+ (instancetype)imageDescriptorWithChannelFormat:(MPSImageFeatureChannelFormat)channelFormat
                                           width:(NSUInteger)width
                                          height:(NSUInteger)height
                                 featureChannels:(NSUInteger)featureChannels;
+ (instancetype)imageDescriptorWithChannelFormat:(MPSImageFeatureChannelFormat)channelFormat
                                           width:(NSUInteger)width
                                          height:(NSUInteger)height
                                 featureChannels:(NSUInteger)featureChannels
                                  numberOfImages:(NSUInteger)numberOfImages
                                           usage:(MTLTextureUsage)usage;
@end

@interface MPSImage : NSObject
@property(readonly, retain, nonatomic) id<MTLDevice> device;
// Storage is allocated lazily, on first use.
- (instancetype)initWithDevice:(id<MTLDevice>)device imageDescriptor:(MPSImageDescriptor*)imageDescriptor;
@property(readonly, nonatomic) MTLTextureUsage usage;
@property(copy, atomic) NSString* label;
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
// x is the column, y the row of the matrix where image 0 starts (default 0, 0, 0).
@property(readwrite, nonatomic) MTLOrigin destinationMatrixOrigin;
// macOS 10.15+: the matrix (of matrices) the images go to.
@property(readwrite, nonatomic) NSUInteger destinationMatrixBatchIndex;
@property(readonly, nonatomic) MPSDataLayout dataLayout;
- (instancetype)initWithDevice:(id<MTLDevice>)device dataLayout:(MPSDataLayout)dataLayout;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
            destinationMatrix:(MPSMatrix*)destinationMatrix;
@end

// macOS 10.14+.
@interface MPSMatrixCopyToImage : MPSKernel
// x is the column, y the row of the matrix where image 0 starts (default 0, 0, 0).
@property(readwrite, nonatomic) MTLOrigin sourceMatrixOrigin;
@property(readwrite, nonatomic) NSUInteger sourceMatrixBatchIndex;
@property(readonly, nonatomic) MPSDataLayout dataLayout;
- (instancetype)initWithDevice:(id<MTLDevice>)device dataLayout:(MPSDataLayout)dataLayout;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                 sourceMatrix:(MPSMatrix*)sourceMatrix
             destinationImage:(MPSImage*)destinationImage;
@end

@interface MPSNNOptimizerDescriptor : NSObject
@property(readwrite, nonatomic) float learningRate;
@property(readwrite, nonatomic) float gradientRescale;
@property(readwrite, nonatomic) BOOL applyGradientClipping;
// Bounds of the gradient before it is rescaled.
@property(readwrite, nonatomic) float gradientClipMax;
@property(readwrite, nonatomic) float gradientClipMin;
@property(readwrite, nonatomic) float regularizationScale;
@property(readwrite, nonatomic) MPSNNRegularizationType regularizationType;
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
@property(readonly, nonatomic) float gradientRescale;
@property(readwrite, nonatomic) BOOL applyGradientClipping;
@property(readonly, nonatomic) float gradientClipMax;
@property(readonly, nonatomic) float gradientClipMin;
@property(readonly, nonatomic) float regularizationScale;
@property(readonly, nonatomic) MPSNNRegularizationType regularizationType;
- (instancetype)initWithDevice:(id<MTLDevice>)device NS_UNAVAILABLE;
- (void)setLearningRate:(float)newLearningRate;
@end

@interface MPSNNOptimizerAdam : MPSNNOptimizer
@property(readonly, nonatomic) double beta1;
@property(readonly, nonatomic) double beta2;
@property(readonly, nonatomic) float epsilon;
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
// AMSGrad, macOS 10.15+. A nil maximumVelocityVector is plain Adam.
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
          inputGradientVector:(MPSVector*)inputGradientVector
            inputValuesVector:(MPSVector*)inputValuesVector
          inputMomentumVector:(MPSVector*)inputMomentumVector
          inputVelocityVector:(MPSVector*)inputVelocityVector
        maximumVelocityVector:(MPSVector*)maximumVelocityVector
           resultValuesVector:(MPSVector*)resultValuesVector;
@end

@interface MPSNNOptimizerStochasticGradientDescent : MPSNNOptimizer
@property(readonly, nonatomic) float momentumScale;
// macOS 11+ spelling (10.14: useNestrovMomentum).
@property(readonly, nonatomic) BOOL useNesterovMomentum;
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
@property(readonly, nonatomic) double decay;
@property(readonly, nonatomic) float epsilon;
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

// ============================================================ CNN: convolution (MPSNeuralNetwork)
// MPSCoreTypes.h: a signed pixel offset (x, y) and the first image of a batch (z).
typedef struct {
  NSInteger x;
  NSInteger y;
  NSInteger z;
} MPSOffset;

// MPSCoreTypes.h: what a kernel reads outside the source image. MPSCNNKernel's default
// is Zero.
typedef NS_ENUM(NSUInteger, MPSImageEdgeMode) {
  MPSImageEdgeModeZero = 0,
  MPSImageEdgeModeClamp = 1,
};

// MPSCNNNeuronType (MPSNeuralNetworkTypes.h), the two the project uses: ReLU is
// f(x) = x >= 0 ? x : a * x.
typedef NS_ENUM(int32_t, MPSCNNNeuronType) {
  MPSCNNNeuronTypeNone = 0,
  MPSCNNNeuronTypeReLU = 1,
};

// MPSNeuralNetworkTypes.h (macOS 10.13.4): the precision of the convolution's sums. Set
// it explicitly: Apple's pages do not state the kernel's default, and Half "is silently
// ignored" before A11-class GPUs.
typedef NS_OPTIONS(NSUInteger, MPSNNConvolutionAccumulatorPrecisionOption) {
  MPSNNConvolutionAccumulatorPrecisionOptionHalf = 0,
  MPSNNConvolutionAccumulatorPrecisionOptionFloat = 1,
};

// MPSCNNConvolution.h (macOS 10.13.4): which gradients MPSCNNConvolutionGradient computes.
typedef NS_OPTIONS(NSUInteger, MPSCNNConvolutionGradientOption) {
  MPSCNNConvolutionGradientOptionGradientWithData = 1,
  MPSCNNConvolutionGradientOptionGradientWithWeightsAndBias = 2,
  MPSCNNConvolutionGradientOptionAll = 3,
};

// MPSCNNNeuron.h (macOS 10.14).
@interface MPSNNNeuronDescriptor : NSObject <NSCopying>
@property(readwrite, nonatomic) MPSCNNNeuronType neuronType;
@property(readwrite, nonatomic) float a;
@property(readwrite, nonatomic) float b;
@property(readwrite, nonatomic) float c;
+ (MPSNNNeuronDescriptor*)cnnNeuronDescriptorWithType:(MPSCNNNeuronType)neuronType;
+ (MPSNNNeuronDescriptor*)cnnNeuronDescriptorWithType:(MPSCNNNeuronType)neuronType a:(float)a;
@end

// MPSCNNConvolution.h (macOS 10.13). The kernel window of output pixel (x, y) has its left
// edge at offset.x + x * strideInPixelsX - (kernelWidth >> 1) (and likewise in y);
// groups > 1 needs inputFeatureChannels / groups and outputFeatureChannels / groups to be
// multiples of 4.
@interface MPSCNNConvolutionDescriptor : NSObject <NSCopying>
@property(readwrite, nonatomic) NSUInteger kernelWidth;
@property(readwrite, nonatomic) NSUInteger kernelHeight;
@property(readwrite, nonatomic) NSUInteger inputFeatureChannels;
@property(readwrite, nonatomic) NSUInteger outputFeatureChannels;
@property(readwrite, nonatomic) NSUInteger strideInPixelsX;
@property(readwrite, nonatomic) NSUInteger strideInPixelsY;
@property(readwrite, nonatomic) NSUInteger groups;
@property(readwrite, nonatomic) NSUInteger dilationRateX;
@property(readwrite, nonatomic) NSUInteger dilationRateY;
// macOS 10.14: a neuron applied to the result (nil: none).
@property(readwrite, nonatomic, retain) MPSNNNeuronDescriptor* fusedNeuronDescriptor;
+ (instancetype)cnnConvolutionDescriptorWithKernelWidth:(NSUInteger)kernelWidth
                                           kernelHeight:(NSUInteger)kernelHeight
                                   inputFeatureChannels:(NSUInteger)inputFeatureChannels
                                  outputFeatureChannels:(NSUInteger)outputFeatureChannels;
@end

// MPSCNNConvolution.h (macOS 10.13): depthwise convolution; groups must be 1, and only a
// channel multiplier of 1 is supported (outputFeatureChannels == inputFeatureChannels).
// Weights are [outputFeatureChannels][kernelHeight][kernelWidth].
@interface MPSCNNDepthWiseConvolutionDescriptor : MPSCNNConvolutionDescriptor
@property(readonly, nonatomic) NSUInteger channelMultiplier;
@end

// MPSCNNConvolution.h: where MPSCNNConvolution gets its weights. weights are
// [outputFeatureChannels][kernelHeight][kernelWidth][inputFeatureChannels / groups] of
// dataType; biasTerms are outputFeatureChannels floats, or NULL. Each load is balanced by
// a purge once MPS no longer needs the data.
@protocol MPSCNNConvolutionDataSource <NSCopying, NSObject>
@required
- (MPSDataType)dataType;
- (MPSCNNConvolutionDescriptor*)descriptor;
- (void*)weights;
- (float*)biasTerms;
- (BOOL)load;
- (void)purge;
- (NSString*)label;
@end

// MPSState.h (macOS 10.13.4): what a forward kernel hands its gradient kernel.
@interface MPSState : NSObject
@end

@interface MPSNNGradientState : MPSState
@end

@class MPSCNNConvolution;

// MPSCNNConvolution.h (macOS 10.13.4): made by -[MPSCNNConvolution
// resultStateForSourceImage:sourceStates:destinationImage:], consumed by
// MPSCNNConvolutionGradient, one per batch; the gradients w.r.t. weights
// ([outputFeatureChannels][kernelHeight][kernelWidth][inputFeatureChannels / groups]) and
// biases ([outputFeatureChannels]) that the gradient kernel writes (both nonnull).
@interface MPSCNNConvolutionGradientState : MPSNNGradientState
@property(readonly, nonatomic) id<MTLBuffer> gradientForWeights;
@property(readonly, nonatomic) id<MTLBuffer> gradientForBiases;
@property(readonly, retain, nonatomic) MPSCNNConvolution* convolution;
@end

// MPSCNNKernel.h (macOS 10.13): one source image, one destination image.
@interface MPSCNNKernel : MPSKernel
// clipRect.origin in source coordinates; z is the first source image of the batch.
@property(readwrite, nonatomic) MPSOffset offset;
@property(readwrite, nonatomic) MPSImageEdgeMode edgeMode;
@property(readonly, nonatomic) NSUInteger kernelWidth;
@property(readonly, nonatomic) NSUInteger kernelHeight;
@property(readonly, nonatomic) NSUInteger strideInPixelsX;
@property(readonly, nonatomic) NSUInteger strideInPixelsY;
@property(readonly, nonatomic) NSUInteger dilationRateX;
@property(readonly, nonatomic) NSUInteger dilationRateY;
// The destination's size and the offset are the caller's (no padding policy runs).
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage;
// macOS 10.13.4: the state this kernel would produce for these images (nil if none).
- (MPSState*)resultStateForSourceImage:(MPSImage*)sourceImage
                          sourceStates:(NSArray<MPSState*>*)sourceStates
                      destinationImage:(MPSImage*)destinationImage;
@end

// MPSCNNConvolution.h (macOS 10.13).
@interface MPSCNNConvolution : MPSCNNKernel
@property(readonly, nonatomic) NSUInteger inputFeatureChannels;
@property(readonly, nonatomic) NSUInteger outputFeatureChannels;
@property(readonly, nonatomic) NSUInteger groups;
// macOS 10.13.4.
@property(readwrite, nonatomic) MPSNNConvolutionAccumulatorPrecisionOption accumulatorPrecisionOption;
// Calls the data source's load, reads its descriptor, weights and biases, then purge.
- (instancetype)initWithDevice:(id<MTLDevice>)device weights:(id<MPSCNNConvolutionDataSource>)weights;
- (instancetype)initWithDevice:(id<MTLDevice>)device NS_UNAVAILABLE;
- (MPSCNNConvolutionGradientState*)resultStateForSourceImage:(MPSImage*)sourceImage
                                                sourceStates:(NSArray<MPSState*>*)sourceStates
                                            destinationImage:(MPSImage*)destinationImage;
@end

// MPSCNNKernel.h (macOS 10.13.4): two sources (here a gradient and a forward source).
@interface MPSCNNBinaryKernel : MPSKernel
@end

// MPSCNNKernel.h (macOS 10.13.4): the backward pass of an MPSCNNKernel.
@interface MPSCNNGradientKernel : MPSCNNBinaryKernel
@property(readwrite, nonatomic) NSInteger kernelOffsetX;
@property(readwrite, nonatomic) NSInteger kernelOffsetY;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
               sourceGradient:(MPSImage*)sourceGradient
                  sourceImage:(MPSImage*)sourceImage
                gradientState:(MPSState*)gradientState
          destinationGradient:(MPSImage*)destinationGradient;
@end

// MPSCNNConvolution.h (macOS 10.13.4): dL/dsource into destinationGradient, dL/dweights
// and dL/dbias into the gradient state's buffers, as gradientOption says.
@interface MPSCNNConvolutionGradient : MPSCNNGradientKernel
@property(readonly, nonatomic) NSUInteger sourceGradientFeatureChannels;
@property(readonly, nonatomic) NSUInteger sourceImageFeatureChannels;
@property(readonly, nonatomic) NSUInteger groups;
@property(readwrite, nonatomic) MPSCNNConvolutionGradientOption gradientOption;
- (instancetype)initWithDevice:(id<MTLDevice>)device weights:(id<MPSCNNConvolutionDataSource>)weights;
- (instancetype)initWithDevice:(id<MTLDevice>)device NS_UNAVAILABLE;
@end

// One header per family added after the convolution (as Apple splits MPSNeuralNetwork).
#include "MPSCNNConvolutionTranspose.h"
#include "MPSCNNFullyConnected.h"
#include "MPSCNNNormalization.h"
#include "MPSCNNPooling.h"

#endif  // TFMPS_STUB_METALPERFORMANCESHADERS_H_
