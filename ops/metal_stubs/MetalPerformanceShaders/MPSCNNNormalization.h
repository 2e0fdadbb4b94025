// The project's declarations of MPSCNNBatchNormalization.h and MPSCNNInstanceNormalization.h: the kernels, their data sources, states and gradient kernels
// (included by MetalPerformanceShaders.h; what tf-mps uses, as Apple declares it).
//
// Checked against Apple's MPSCNNBatchNormalization(3) page (MetalPerformanceShaders-119.3)
// and developer.apple.com: MPSCNNBatchNormalization inherits MPSCNNKernel and computes,
// per feature channel c,
//   out = (in - mean[c]) * gamma[c] / sqrt(variance[c] + epsilon) + beta[c]
// (epsilon inside the square root, added to the variance).
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
@end

#endif  // TFMPS_STUB_MPSCNNNORMALIZATION_H_
