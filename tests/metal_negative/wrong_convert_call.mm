// Negative test of the Metal type-check (tools/metal_typecheck.sh) for the convert
// family's APIs (ops/convert/convert_metal.mm): every call below is a mistake that
// Apple's real headers reject too, so compiling this file must fail, and clang's -verify
// must see exactly the diagnostics annotated here (see wrong_call.mm).
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

void WrongConvertCalls(id<MTLDevice> device, id<MTLCommandBuffer> cb, MPSImage* image,
                       MPSMatrix* matrix, MPSImageCopyToMatrix* to_matrix,
                       MPSMatrixCopyToImage* to_image, const float* src) {
  // Direction mixed up: image -> matrix takes sourceImage:destinationMatrix:, the
  // sourceMatrix:destinationImage: form belongs to MPSMatrixCopyToImage.
  [to_matrix encodeToCommandBuffer:cb sourceMatrix:matrix destinationImage:image];  // expected-error {{no visible @interface for 'MPSImageCopyToMatrix' declares the selector 'encodeToCommandBuffer:sourceMatrix:destinationImage:'}}

  // ... and the other way round.
  [to_image encodeToCommandBuffer:cb sourceImage:image destinationMatrix:matrix];  // expected-error {{no visible @interface for 'MPSMatrixCopyToImage' declares the selector 'encodeToCommandBuffer:sourceImage:destinationMatrix:'}}

  // Wrong enum: dataLayout: takes an MPSDataLayout, not the matrix's MPSDataType.
  (void)[[MPSImageCopyToMatrix alloc] initWithDevice:device dataLayout:MPSDataTypeFloat32];  // expected-error {{cannot initialize a parameter of type 'MPSDataLayout' with an rvalue of type 'MPSDataType'}}

  // Wrong enum: the feature channel format is the image's, not a memory layout.
  [image writeBytes:src dataLayout:MPSImageFeatureChannelFormatFloat32 imageIndex:0];  // expected-error {{cannot initialize a parameter of type 'MPSDataLayout' with an rvalue of type 'MPSImageFeatureChannelFormat'}}

  // Reading into the const source: readBytes: writes through a void*.
  [image readBytes:src dataLayout:MPSDataLayoutHeightxWidthxFeatureChannels imageIndex:0];  // expected-error {{cannot initialize a parameter of type 'void *' with an lvalue of type 'const float *'}}
}

// clang points at the stub declarations involved; any file and line will do.
// expected-note@*:* {{passing argument to parameter 'dataLayout' here}}
// expected-note@*:* {{passing argument to parameter 'dataLayout' here}}
// expected-note@*:* {{passing argument to parameter 'dataBytes' here}}
