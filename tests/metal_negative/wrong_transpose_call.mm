// Negative test of the Metal type-check (tools/metal_typecheck.sh) for
// MPSCNNConvolutionTranspose: every call below is wrong against Apple's real header
// (MPSCNNConvolution.h), so compiling this file must fail with exactly these errors.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

void WrongTransposeCalls(id<MTLDevice> device, id<MPSCNNConvolutionDataSource> weights,
                         MPSCNNConvolutionTranspose* tr) {
  // The transpose cannot be created from a device alone (NS_UNAVAILABLE).
  (void)[[MPSCNNConvolutionTranspose alloc] initWithDevice:device];  // expected-error {{'initWithDevice:' is unavailable}}

  // groups and the feature channel counts are read-only (they come from the descriptor).
  tr.groups = 2;  // expected-error {{assignment to readonly property}}
  tr.inputFeatureChannels = 4;  // expected-error {{assignment to readonly property}}

  // kernelOffsetX is an NSInteger, not an MPSOffset (MPSCNNKernel's offset is).
  MPSOffset o = {0, 0, 0};
  tr.kernelOffsetX = o;  // expected-error {{no viable conversion from 'MPSOffset' to 'NSInteger'}}

  // Apple's initializer names its data source weights:, not dataSource:.
  (void)[[MPSCNNConvolutionTranspose alloc] initWithDevice:device dataSource:weights];  // expected-error {{no visible @interface for 'MPSCNNConvolutionTranspose' declares the selector 'initWithDevice:dataSource:'}}
}

// clang points at the stub declarations involved; any file and line will do.
// expected-note@*:* {{'initWithDevice:' has been explicitly marked unavailable here}}
// expected-note@*:* {{passing argument to parameter 'kernelOffsetX' here}}
