// The project's declarations of MPSCNNBatchNormalization.h and MPSCNNInstanceNormalization.h: the kernels, their data sources, states and gradient kernels
// (included by MetalPerformanceShaders.h; what tf-mps uses, as Apple declares it).
//
// Checked against Apple's MPSCNNBatchNormalization(3) page (MetalPerformanceShaders-119.3)
// and developer.apple.com: MPSCNNBatchNormalization inherits MPSCNNKernel and computes,
// per feature channel c,
//   out = (in - mean[c]) * gamma[c] / sqrt(variance[c] + epsilon) + beta[c]
// (epsilon inside the square root, added to the variance).
// MPSCNNBatchNormalization.h (the header's own comments) adds: the data source's
// optional -epsilon defaults to FLT_MIN when the data source does not implement it; an
// MPSCNNBatchNormalizationState "cannot initialize the size of its own underlying
// resources" (made by -[MPSCNNBatchNormalization resultStateForSourceImage:...]);
// MPSCNNBatchNormalizationStatistics "may be executed multiple times with multiple
// images to accumulate" the batch statistics "as described in" Ioffe & Szegedy
// (arXiv 1502.03167v3, whose training transform normalizes with the biased batch
// variance, (1/m) sum (x - mean)^2); the state's -mean / -variance are "the most recently
// computed batch mean / variance values".
#ifndef TFMPS_STUB_MPSCNNNORMALIZATION_H_
#define TFMPS_STUB_MPSCNNNORMALIZATION_H_

// MPSCNNBatchNormalization.h (macOS 10.13.4): where MPSCNNBatchNormalization gets its
// per-channel parameters. gamma, beta, mean, variance return numberOfFeatureChannels
// floats; load is called before they are read, purge after.
@protocol MPSCNNBatchNormalizationDataSource <NSObject, NSCopying>
@required
- (NSUInteger)numberOfFeatureChannels;
- (float*)gamma;
- (float*)beta;
- (float*)mean;
- (float*)variance;
- (BOOL)load;
- (void)purge;
- (NSString*)label;
@optional
// macOS 10.14: the epsilon the kernel is initialized with.
- (float)epsilon;
@end

// MPSImage.h (macOS 10.13.4).
typedef NSArray<MPSImage*> MPSImageBatch;

@class MPSCNNBatchNormalization;

// MPSCNNBatchNormalization.h (macOS 10.13.4): the statistics (and, after the gradient
// kernels, the gradients for gamma and beta) of one batch normalization. No public
// initializer: made by -[MPSCNNBatchNormalization resultStateForSourceImage:...].
@interface MPSCNNBatchNormalizationState : MPSNNGradientState
@property(readonly, retain, nonatomic) MPSCNNBatchNormalization* batchNormalization;
- (instancetype)initWithResource:(id<MTLResource>)resource NS_UNAVAILABLE;
- (void)reset;
- (id<MTLBuffer>)gamma;
- (id<MTLBuffer>)beta;
- (id<MTLBuffer>)mean;
- (id<MTLBuffer>)variance;
- (id<MTLBuffer>)gradientForGamma;
- (id<MTLBuffer>)gradientForBeta;
@end

// MPSCNNBatchNormalization.h (macOS 10.13.4). The inherited
// -encodeToCommandBuffer:sourceImage:destinationImage: normalizes with the data
// source's mean and variance (inference).
@interface MPSCNNBatchNormalization : MPSCNNKernel
@property(readonly, nonatomic) NSUInteger numberOfFeatureChannels;
// Added to the variance inside the square root.
@property(readwrite, nonatomic) float epsilon;
@property(readonly, retain, nonatomic) id<MPSCNNBatchNormalizationDataSource> dataSource;
// Reads the data source (load, the parameters, purge) at initialization.
- (instancetype)initWithDevice:(id<MTLDevice>)device
                    dataSource:(id<MPSCNNBatchNormalizationDataSource>)dataSource;
- (instancetype)initWithDevice:(id<MTLDevice>)device NS_UNAVAILABLE;
// Normalizes with the state's statistics (training: those the statistics kernel wrote).
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
      batchNormalizationState:(MPSCNNBatchNormalizationState*)batchNormalizationState
             destinationImage:(MPSImage*)destinationImage;
- (MPSCNNBatchNormalizationState*)resultStateForSourceImage:(MPSImage*)sourceImage
                                               sourceStates:(NSArray<MPSState*>*)sourceStates
                                           destinationImage:(MPSImage*)destinationImage;
@end

// MPSCNNBatchNormalization.h (macOS 10.13.4): writes the batch statistics of the source
// images into the state. Only the batch encode with a state is available.
@interface MPSCNNBatchNormalizationStatistics : MPSCNNKernel
- (instancetype)initWithDevice:(id<MTLDevice>)device;
- (void)encodeBatchToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                      sourceImages:(MPSImageBatch*)sourceImages
           batchNormalizationState:(MPSCNNBatchNormalizationState*)batchNormalizationState;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
             destinationImage:(MPSImage*)destinationImage NS_UNAVAILABLE;
@end

// MPSCNNBatchNormalization.h (macOS 10.13.4; the fused-neuron initializers 10.14):
// the gradients for gamma and beta into the state (gradientForGamma, gradientForBeta),
// from a state "previously updated using a MPSCNNBatchNormalizationStatistics kernel
// and the source images".
@interface MPSCNNBatchNormalizationStatisticsGradient : MPSCNNGradientKernel
- (instancetype)initWithDevice:(id<MTLDevice>)device
         fusedNeuronDescriptor:(MPSNNNeuronDescriptor*)fusedNeuronDescriptor;
- (void)encodeBatchToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                   sourceGradients:(MPSImageBatch*)sourceGradients
                      sourceImages:(MPSImageBatch*)sourceImages
           batchNormalizationState:(MPSCNNBatchNormalizationState*)batchNormalizationState;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
               sourceGradient:(MPSImage*)sourceGradient
                  sourceImage:(MPSImage*)sourceImage
                gradientState:(MPSState*)gradientState
          destinationGradient:(MPSImage*)destinationGradient NS_UNAVAILABLE;
@end

// MPSCNNBatchNormalization.h: dL/dsource from a state "previously updated using a
// MPSCNNBatchNormalizationStatisticsGradient kernel and the source images".
@interface MPSCNNBatchNormalizationGradient : MPSCNNGradientKernel
- (instancetype)initWithDevice:(id<MTLDevice>)device
         fusedNeuronDescriptor:(MPSNNNeuronDescriptor*)fusedNeuronDescriptor;
- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
               sourceGradient:(MPSImage*)sourceGradient
                  sourceImage:(MPSImage*)sourceImage
      batchNormalizationState:(MPSCNNBatchNormalizationState*)batchNormalizationState
          destinationGradient:(MPSImage*)destinationGradient;
@end

// MPSCNNInstanceNormalization.h (macOS 10.13.4): the per-channel scale and bias of an
// instance normalization. epsilon is optional: "Default value if method unavailable:
// FLT_MIN".
@protocol MPSCNNInstanceNormalizationDataSource <NSObject, NSCopying>
@required
- (float*)gamma;
- (float*)beta;
@property(readonly, nonatomic) NSUInteger numberOfFeatureChannels;
- (NSString*)label;
@optional
- (float)epsilon;
@end

// MPSCNNInstanceNormalization.h (macOS 10.13.4): "normalizes each image, on a per-channel
// basis, to have zero mean and unit variance: for each image: for each channel:
// y = (x - mean) * gamma / sqrt(variance + epsilon) + beta". The inherited
// -encodeToCommandBuffer:sourceImage:destinationImage: runs it.
@interface MPSCNNInstanceNormalization : MPSCNNKernel
@property(readwrite, nonatomic) float epsilon;
@property(readonly, retain, nonatomic) id<MPSCNNInstanceNormalizationDataSource> dataSource;
- (instancetype)initWithDevice:(id<MTLDevice>)device
                    dataSource:(id<MPSCNNInstanceNormalizationDataSource>)dataSource;
- (instancetype)initWithDevice:(id<MTLDevice>)device NS_UNAVAILABLE;
@end

#endif  // TFMPS_STUB_MPSCNNNORMALIZATION_H_
