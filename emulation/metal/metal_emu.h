// The Metal emulation's internal C++ interface: what the MPS fakes (../mps/) and the
// fakes' tests use to reach inside the fake Metal objects. Never included by ops/: the
// project's .mm files see only Apple's API (ops/metal_stubs/).
//
// The model (metal.mm):
//  * A command queue owns one worker thread. Committed command buffers run on it one at
//    a time, in the order they were enqueued (commit enqueues if enqueue was not
//    called), as Apple documents for a queue's command buffers.
//  * A command buffer is a list of work items (std::functions) that encoders append.
//    Nothing runs at encode time: the worker runs the items when the buffer is
//    scheduled, then calls the completed handlers in the order they were added.
//  * Misuse that Metal's API validation layer rejects aborts the process with a message
//    in the validation layer's style (EmuValidationFailure).
//  * TFMPS_METAL_EMU_DEBUG=1: the worker sleeps a random 0.2-3 ms before running each
//    command buffer (a read before the wait reads stale data), and texture-like storage
//    that Apple does not document as cleared (MPSImage) starts as 0xFF bytes, a NaN in
//    float16 and float32. =2 also fills new MTLBuffers with 0xFF, although Apple
//    documents newBufferWithLength: as zero-filling: for code that must not rely on
//    it (TensorFlow never promises zeroed tensors).
#ifndef TFMPS_EMULATION_METAL_METAL_EMU_H_
#define TFMPS_EMULATION_METAL_METAL_EMU_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#import <Metal/Metal.h>

// Prints "tf-mps Metal emulation: <method>: failed assertion `<what>'" to stderr and
// aborts, as Metal's validation layer does. method is "-[Class selector]".
[[noreturn]] void EmuValidationFailure(const char* method, const std::string& what);

// Appends a work item to cb: `work` runs on the queue's worker thread when cb runs.
// Aborts if cb is already committed or has an open encoder (Metal allows one encoder at
// a time; MPS kernels encode their own). `what` names the item in messages.
// `finally`, if given, runs exactly once after the item ran, or was skipped (an earlier
// item failed), or when cb is destroyed without ever being committed.
void EmuEncode(id<MTLCommandBuffer> cb, const char* what, std::function<void()> work,
               std::function<void()> finally = nullptr);

// Like EmuEncode, but the work may fail: a non-empty return is an error message, and
// the command buffer then ends with MTLCommandBufferStatusError and an NSError
// (MTLCommandBufferErrorDomain, `code`) whose localizedDescription is that message; the
// items after it do not run (a GPU fault stops the command buffer).
void EmuEncodeFallible(id<MTLCommandBuffer> cb, const char* what, std::function<std::string()> work,
                       MTLCommandBufferError code = MTLCommandBufferErrorInternal,
                       std::function<void()> finally = nullptr);

// Aborts unless [offset, offset + bytes) lies within buffer (no overflow possible).
void EmuCheckBufferRange(id<MTLBuffer> buffer, size_t offset, size_t bytes, const char* method);

// A buffer's storage as the emulated GPU sees it: valid for every storage mode, also
// private (whose -contents is NULL).
void* EmuBufferBytes(id<MTLBuffer> buffer);

// The TFMPS_METAL_EMU_DEBUG level (0 when unset), read once.
int EmuDebugLevel();
// Fills fresh storage that Apple leaves undefined: 0xFF under the debug mode, else zero.
void EmuFillUndefined(void* p, size_t bytes);

// --- test hooks
// The next `count` initializers (or factory methods) named `class_name` fail: MPS
// initializers and MPSImage/MPSVector/MPSMatrix return nil, as Apple documents for
// failure. Metal factories use their protocol's name: "MTLDevice"
// (MTLCreateSystemDefaultDevice; MTLCopyAllDevices returns an empty array),
// "MTLCommandQueue" (newCommandQueue), "MTLCommandBuffer" (commandBuffer), "MTLBuffer"
// (newBuffer...), "MTLSharedEvent" (newSharedEvent). count 0 clears the entry.
void EmuFailNextInit(const char* class_name, int count);
// True (and counts one down) if the next initializer of class_name is to fail. For the
// fakes' initializers.
bool EmuInitShouldFail(const char* class_name);
// The next `count` command buffers committed (on any queue) end in
// MTLCommandBufferStatusError with `message`, without running their work: a GPU fault
// the code under test must report.
void EmuFailNextCommandBuffers(int count, const std::string& message);
// Clears every pending test hook (for test teardown).
void EmuResetHooks();

#endif  // TFMPS_EMULATION_METAL_METAL_EMU_H_
