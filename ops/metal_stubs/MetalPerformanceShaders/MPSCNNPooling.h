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

#endif  // TFMPS_STUB_MPSCNNPOOLING_H_
