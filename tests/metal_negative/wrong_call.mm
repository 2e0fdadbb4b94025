// Negative test of the Metal type-check (tools/metal_typecheck.sh): every call below is
// wrong against Apple's real headers, so compiling this file must fail. The script also
// compiles it with clang's -verify, which passes only if the diagnostics are exactly the
// ones annotated below: a file that fails for another reason (a missing include, a stub
// typo) is caught too.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

void WrongCalls(id<MTLDevice> device, id<MTLCommandBuffer> cb, MPSVector* v,
                MPSNNOptimizerDescriptor* desc, MPSNNOptimizerAdam* adam, float* raw) {
  // Misspelled keyword: the selector is ...inputVelocityVector:resultValuesVector:.
  [adam encodeToCommandBuffer:cb  // expected-error {{no visible @interface for 'MPSNNOptimizerAdam' declares the selector 'encodeToCommandBuffer:inputGradientVector:inputValuesVector:inputMomentumVector:inputVelocityVector:resultVector:'}}
          inputGradientVector:v
            inputValuesVector:v
          inputMomentumVector:v
          inputVelocityVector:v
                 resultVector:v];

  // Missing argument: RMSProp's initializer takes decay:epsilon:optimizerDescriptor:.
  (void)[[MPSNNOptimizerRMSProp alloc] initWithDevice:device  // expected-error {{no visible @interface for 'MPSNNOptimizerRMSProp' declares the selector 'initWithDevice:decay:optimizerDescriptor:'}}
                                                decay:0.9
                                  optimizerDescriptor:desc];

  // Wrong enum: dataType: takes an MPSDataType.
  (void)[MPSVectorDescriptor vectorDescriptorWithLength:4 dataType:MPSNNRegularizationTypeL1];  // expected-error {{cannot initialize a parameter of type 'MPSDataType' with an rvalue of type}}

  // Wrong pointer type: a raw float* is not an MPSVector.
  [adam encodeToCommandBuffer:cb inputGradientVector:raw inputValuesVector:v inputMomentumVector:v inputVelocityVector:v resultValuesVector:v];  // expected-error {{cannot initialize a parameter of type 'MPSVector *' with an lvalue of type 'float *'}}

  // Optimizers cannot be created from a device alone (NS_UNAVAILABLE in Apple's header).
  (void)[[MPSNNOptimizerAdam alloc] initWithDevice:device];  // expected-error {{'initWithDevice:' is unavailable}}
}

// clang points at the stub declarations involved; any file and line will do.
// expected-note@*:* {{passing argument to parameter 'dataType' here}}
// expected-note@*:* {{passing argument to parameter 'inputGradientVector' here}}
// expected-note@*:* {{'initWithDevice:' has been explicitly marked unavailable here}}
