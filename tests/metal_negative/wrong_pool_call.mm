// Negative test of the Metal type-check (tools/metal_typecheck.sh) for the pooling
// kernels: every call below is wrong against Apple's real header (MPSCNNPooling.h), so
// compiling this file must fail with exactly these errors.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

void WrongPoolCalls(id<MTLDevice> device, MPSCNNPoolingMax* max, MPSCNNPoolingAverage* avg,
                    MPSCNNPoolingMaxGradient* grad, MPSImage* image) {
  // The kernel and stride sizes are fixed at initialization (read-only, from MPSCNNKernel).
  max.kernelWidth = 3;  // expected-error {{assignment to readonly property}}
  avg.strideInPixelsX = 2;  // expected-error {{assignment to readonly property}}

  // zeroPadSizeX belongs to the average pooling, not the max pooling.
  max.zeroPadSizeX = 1;  // expected-error {{property 'zeroPadSizeX' not found on object of type 'MPSCNNPoolingMax *'}}

  // sourceSize is an MTLSize (width, height, depth), not an MPSOffset.
  MPSOffset o = {0, 0, 0};
  grad.sourceSize = o;  // expected-error {{no viable conversion from 'MPSOffset' to 'MTLSize'}}

  // A gradient kernel encodes from a source gradient, a source image and a state, not as
  // a one-source MPSCNNKernel.
  [grad encodeToCommandBuffer:nil sourceImage:image destinationImage:image];  // expected-error {{no visible @interface for 'MPSCNNPoolingMaxGradient' declares the selector 'encodeToCommandBuffer:sourceImage:destinationImage:'}}
}

// clang points at the stub declarations involved; any file and line will do.
// expected-note@*:* 2 {{candidate constructor}}
// expected-note@*:* {{passing argument to parameter 'sourceSize' here}}
