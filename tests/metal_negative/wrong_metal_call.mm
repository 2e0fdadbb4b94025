// Negative test of the Metal type-check (tools/metal_typecheck.sh) for the Metal and MPS
// declarations the emulation added (command-buffer handlers, blit encoder, events,
// device lists, MPSImage creation): every line below is a mistake that Apple's real
// headers reject too, so compiling this file must fail, and clang's -verify must see
// exactly the diagnostics annotated here (see wrong_call.mm).
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

void WrongMetalCalls(id<MTLDevice> device, id<MTLCommandBuffer> cb, id<MTLBlitCommandEncoder> blit,
                     id<MTLBuffer> buffer, id<MTLSharedEvent> event, MPSImageDescriptor* desc) {
  // The selector is addCompletedHandler:, not the "completion" spelling.
  [cb addCompletionHandler:^(id<MTLCommandBuffer> b) {  // expected-error {{no known instance method for selector 'addCompletionHandler:'}}
  }];

  // fillBuffer:range:value: takes an NSRange, not a length.
  [blit fillBuffer:buffer range:16 value:0];  // expected-error {{no viable conversion from 'int' to 'NSRange'}}

  // MTLCopyAllDevices returns an array of devices, not a device.
  id<MTLDevice> first = MTLCopyAllDevices();  // expected-error {{cannot initialize a variable of type '__strong id<MTLDevice>' with an rvalue of type 'NSArray<id<MTLDevice>> *'}}
  (void)first;

  // MPSImage is made from an image descriptor: initWithDevice:imageDescriptor:.
  (void)[[MPSImage alloc] initWithDevice:device descriptor:desc];  // expected-error {{no visible @interface for 'MPSImage' declares the selector 'initWithDevice:descriptor:'}}

  // A shared event's value is a uint64_t property, not an object.
  event.signaledValue = nil;  // expected-error {{assigning to 'uint64_t' (aka 'unsigned long') from incompatible type 'std::nullptr_t'}}
}

// clang points at the stub declarations involved; any file and line will do.
// expected-note@*:* {{passing argument to parameter 'range' here}}
// expected-note@*:* {{candidate constructor (the implicit copy constructor) not viable}}
// expected-note@*:* {{candidate constructor (the implicit move constructor) not viable}}
