// The project's declarations of MPSCNNPooling.h: MPSCNNPoolingMax/Average and their gradient kernels
// (included by MetalPerformanceShaders.h; what tf-mps uses, as Apple declares it).
//
// Checked against developer.apple.com's MPSCNNPooling page: the pooling window centre of
// the first output pixel of the clip rectangle is at (offset.x, offset.y) in the source;
// its top left corner at (offset.x - floor(kernelWidth/2), offset.y - floor(kernelHeight/2)),
// extending kernelWidth x kernelHeight pixels right and down; output (x, y) shifts it by
// (strideInPixelsX * x, strideInPixelsY * y). MPSCNNPoolingAverage: with edgeMode Clamp
// the window shrinks to the part inside the source image (fewer values averaged), a window
// entirely outside gives 0; zeroPadSizeX/Y add zero padding that counts in the average.
#ifndef TFMPS_STUB_MPSCNNPOOLING_H_
#define TFMPS_STUB_MPSCNNPOOLING_H_

// MPSCNNPooling.h (macOS 10.13): the abstract pooling kernel. Kernel sizes may be odd or even.
@interface MPSCNNPooling : MPSCNNKernel
- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY;
@end

// The maximum of the window's pixels.
@interface MPSCNNPoolingMax : MPSCNNPooling
- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY;
@end

// The mean of the window's pixels (see the header comment for edgeMode Clamp).
@interface MPSCNNPoolingAverage : MPSCNNPooling
@property(readwrite, nonatomic) NSUInteger zeroPadSizeX;
@property(readwrite, nonatomic) NSUInteger zeroPadSizeY;
- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY;
@end

// MPSCNNKernel.h declares these two on MPSCNNBinaryKernel (macOS 10.13): the position of
// the destination clip rectangle's origin in the primary / secondary source. The project's
// MetalPerformanceShaders.h does not declare them yet; declared here, for the pooling
// gradients, as a category (on a Mac the SDK's header has them; the emulation implements
// them on MPSCNNPoolingGradient only).
@interface MPSCNNBinaryKernel (TFMPSBinaryKernelOffsets)
@property(readwrite, nonatomic) MPSOffset primaryOffset;
@property(readwrite, nonatomic) MPSOffset secondaryOffset;
@end

// MPSCNNPooling.h (macOS 10.13.4): the gradient of a pooling filter,
//   dL/d in(y) = sum_x dL/d out(x) * d out(x)/d in(y),
// the sum over the source gradient's pixels from primaryOffset to primaryOffset +
// sourceSize; in normal operation sourceSize is the forward's clipRect.size and
// primaryOffset its clipRect.origin. y is a pixel of the secondary source (the forward's
// source image). encodeToCommandBuffer:sourceGradient:sourceImage:gradientState:
// destinationGradient: (MPSCNNGradientKernel) takes the forward's result state.
@interface MPSCNNPoolingGradient : MPSCNNGradientKernel
@property(readwrite, nonatomic) MTLSize sourceSize;
- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY;
@end

// d out(x)/d in(y) = delta(x_m, y), x_m the maximum's position in x's window: the kernel
// finds it by re-reading the source image. Apple: with several maximal values in a
// window "one of them is picked for the gradient and this decision is implementation
// specific".
@interface MPSCNNPoolingMaxGradient : MPSCNNPoolingGradient
- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY;
@end

// d out(x)/d in(y) = sum over the window of delta(s*x + dx, y) / N(x), N(x) the effective
// window size as MPSCNNPoolingAverage defines it. The source image's values are not read
// (Apple: any correctly sized image gives correct results).
@interface MPSCNNPoolingAverageGradient : MPSCNNPoolingGradient
@property(readwrite, nonatomic) NSUInteger zeroPadSizeX;
@property(readwrite, nonatomic) NSUInteger zeroPadSizeY;
- (instancetype)initWithDevice:(id<MTLDevice>)device
                   kernelWidth:(NSUInteger)kernelWidth
                  kernelHeight:(NSUInteger)kernelHeight
               strideInPixelsX:(NSUInteger)strideInPixelsX
               strideInPixelsY:(NSUInteger)strideInPixelsY;
@end

#endif  // TFMPS_STUB_MPSCNNPOOLING_H_
