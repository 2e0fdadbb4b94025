// Negative test of the Metal type-check (tools/metal_typecheck.sh) for the norm family's
// APIs (ops/norm/norm_metal.mm, MPSCNNNormalization.h): every call below is a mistake
// that Apple's real headers reject too (as MPSCNNBatchNormalization.h and
// MPSCNNInstanceNormalization.h declare them), so compiling this file must fail, and
// clang's -verify must see exactly the diagnostics annotated here (see wrong_call.mm).
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

void WrongNormCalls(id<MTLDevice> device, id<MTLCommandBuffer> cb, MPSImage* image, MPSImage* out,
                    MPSCNNBatchNormalization* bn, MPSCNNBatchNormalizationStatistics* stats,
                    MPSCNNBatchNormalizationState* state) {
  // The kernels need a data source: -initWithDevice: alone is unavailable.
  (void)[[MPSCNNBatchNormalization alloc] initWithDevice:device];  // expected-error {{'initWithDevice:' is unavailable}}
  (void)[[MPSCNNInstanceNormalization alloc] initWithDevice:device];  // expected-error {{'initWithDevice:' is unavailable}}

  // The statistics kernel writes a state, not an image: its image encode is unavailable.
  [stats encodeToCommandBuffer:cb sourceImage:image destinationImage:out];  // expected-error {{'encodeToCommandBuffer:sourceImage:destinationImage:' is unavailable}}

  // The states have no public initializer (made by -resultStateForSourceImage:...).
  (void)[[MPSCNNBatchNormalizationState alloc] initWithResource:nil];  // expected-error {{'initWithResource:' is unavailable}}

  // The statistics kernel takes a batch (an NSArray of images), not one image.
  [stats encodeBatchToCommandBuffer:cb sourceImages:image batchNormalizationState:state];  // expected-error {{cannot initialize a parameter of type 'MPSImageBatch *' (aka 'NSArray<MPSImage *> *') with an lvalue of type 'MPSImage *__strong'}}
}

// clang points at the stub declarations involved; any file and line will do.
// expected-note@*:* {{'initWithDevice:' has been explicitly marked unavailable here}}
// expected-note@*:* {{'initWithDevice:' has been explicitly marked unavailable here}}
// expected-note@*:* {{'encodeToCommandBuffer:sourceImage:destinationImage:' has been explicitly marked unavailable here}}
// expected-note@*:* {{'initWithResource:' has been explicitly marked unavailable here}}
// expected-note@*:* {{passing argument to parameter 'sourceImages' here}}
