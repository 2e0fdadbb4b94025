// The project's declarations of MPSCNNConvolution.h's MPSCNNConvolutionTranspose(+Gradient)
// (included by MetalPerformanceShaders.h; what tf-mps uses, as Apple declares it).
//
// Checked against Apple's MPSCNNConvolution.h / MPSCNNConvolutionTranspose(3)
// (MetalPerformanceShaders-119.3) and developer.apple.com: an MPSCNNKernel subclass
// (macOS 10.13) made from an MPSCNNConvolutionDataSource; the weights are used as given
// ("MPS ... does not perform any rotation"); a stride s > 1 puts s - 1 zeros between
// source pixels ("intermediate image size = (srcSize - 1) * Stride + 1") and a
// convolution runs over that expanded image; "totalOffset = Offset * stride +
// kernelOffset" in the expanded image's frame (offset: MPSCNNKernel's, kernelOffsetX/Y:
// "Offset in X from which the kernel starts sliding"). accumulatorPrecisionOption
// (macOS 10.13.4): "Default is MPSNNConvolutionAccumulatorPrecisionOptionFloat".
#ifndef TFMPS_STUB_MPSCNNCONVOLUTIONTRANSPOSE_H_
#define TFMPS_STUB_MPSCNNCONVOLUTIONTRANSPOSE_H_

// MPSCNNConvolution.h (macOS 10.13). The inherited
// -encodeToCommandBuffer:sourceImage:destinationImage: takes the destination's size and
// the offsets as set (no padding policy, no gradient state).
@interface MPSCNNConvolutionTranspose : MPSCNNKernel
@property(readonly, nonatomic) NSUInteger inputFeatureChannels;
@property(readonly, nonatomic) NSUInteger outputFeatureChannels;
@property(readwrite, nonatomic) NSInteger kernelOffsetX;
@property(readwrite, nonatomic) NSInteger kernelOffsetY;
@property(readonly, nonatomic) NSUInteger groups;
// macOS 10.13.4.
@property(readwrite, nonatomic) MPSNNConvolutionAccumulatorPrecisionOption accumulatorPrecisionOption;
// Calls the data source's load, reads its descriptor, weights and biases, then purge.
// Apple: "Currently we support only Float32 weights."
- (instancetype)initWithDevice:(id<MTLDevice>)device weights:(id<MPSCNNConvolutionDataSource>)weights;
- (instancetype)initWithDevice:(id<MTLDevice>)device NS_UNAVAILABLE;
@end

#endif  // TFMPS_STUB_MPSCNNCONVOLUTIONTRANSPOSE_H_
