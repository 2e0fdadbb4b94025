// The project's declarations of MPSCNNConvolution.h's MPSCNNFullyConnected(+Gradient)
// (included by MetalPerformanceShaders.h; what tf-mps uses, as Apple declares it).
#ifndef TFMPS_STUB_MPSCNNFULLYCONNECTED_H_
#define TFMPS_STUB_MPSCNNFULLYCONNECTED_H_

// MPSCNNConvolution.h (macOS 10.13): a fully connected layer. Apple: the kernel width
// and height equal the source image's width and height, the destination is 1 x 1
// (clipRect.size 1 x 1); it convolves a srcW x srcH x Ni image with
// Weights[No][source.width][source.height][Ni] (the data source's -weights; width
// before height, unlike MPSCNNConvolution's [No][kH][kW][Ni]) into 1 x 1 x No.
// Descriptor strides and groups must be 1.
@interface MPSCNNFullyConnected : MPSCNNConvolution
- (instancetype)initWithDevice:(id<MTLDevice>)device weights:(id<MPSCNNConvolutionDataSource>)weights;
- (instancetype)initWithDevice:(id<MTLDevice>)device NS_UNAVAILABLE;
@end

// MPSCNNConvolution.h (macOS 10.13.4): the gradient of a fully connected layer.
@interface MPSCNNFullyConnectedGradient : MPSCNNConvolutionGradient
- (instancetype)initWithDevice:(id<MTLDevice>)device weights:(id<MPSCNNConvolutionDataSource>)weights;
- (instancetype)initWithDevice:(id<MTLDevice>)device NS_UNAVAILABLE;
@end

#endif  // TFMPS_STUB_MPSCNNFULLYCONNECTED_H_
