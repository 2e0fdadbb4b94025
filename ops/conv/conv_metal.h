// Metal backend of the conv family (conv_metal.mm, macOS; on Linux it runs against the
// Metal emulation): MPSCNNConvolution and MPSCNNConvolutionGradient behind the backend
// seam, on the same plain structs as the CPU backend (conv.h).
//
// Every entry point returns
//   kOk           the result is (or, in a device stream, will be once the stream's work
//                 has run) in the output buffers;
//   kUnsupported  MPS cannot compute these arguments exactly (the message says why):
//                 the caller runs the CPU backend on the same memory, nothing was
//                 written;
//   kInternal     an MPS initializer returned nil or the command buffer failed.
// Buffers: input, output and gradient pointers must lie in registered Metal buffers
// (metal_context.h) at 16-byte aligned offsets (else kUnsupported); the filter and bias
// are read on the CPU (they reach MPS through an MPSCNNConvolutionDataSource, repacked
// HWIO -> OHWI by conv_repack.h), so they may be anywhere. With a thread target (a
// device stream) the entry points first wait for the stream's queued work, since the
// data source reads the filter on the CPU, and BackpropFilter waits after its work too
// (the weight gradient comes back in MPS's OHWI layout and is repacked on the CPU).
#ifndef TFMPS_CONV_CONV_METAL_H_
#define TFMPS_CONV_CONV_METAL_H_

#include "ops/common/backend.h"
#include "ops/conv/conv.h"

namespace tfmps {
namespace conv {

// The op's accumulator_precision. kFloat16 is always kUnsupported here: MPS silently
// ignores Half on GPUs older than A11 (so results would depend on the machine), and the
// emulation does not model MPS's half sums; the CPU backend's *HalfAcc* functions do.
enum class Accumulator { kFloat32, kFloat16 };

BackendStatus Conv2DForwardMetal(const Conv2DGeometry& g, const Conv2DForwardArgs& a,
                                 Accumulator acc = Accumulator::kFloat32);
BackendStatus Conv2DBackpropInputMetal(const Conv2DGeometry& g, const Conv2DBackpropInputArgs& a,
                                       Accumulator acc = Accumulator::kFloat32);
BackendStatus Conv2DBackpropFilterMetal(const Conv2DGeometry& g, const Conv2DBackpropFilterArgs& a,
                                        Accumulator acc = Accumulator::kFloat32);

// tf.nn.conv2d_transpose (the MpsConv2DTranspose op) on MPSCNNConvolutionTranspose:
//   output = act(Conv2DBackpropInput(g, filter, input) + bias)
// with g the geometry of the convolution from an image of the output's shape
// [N, H, W, C] (g.in_*) to the input's [N, OH, OW, O] (g.out_*), the filter that
// convolution's HWIO [KH, KW, C/G, O] and the bias [C] or nullptr (conv_metal.mm says
// which geometries map; the rest is kUnsupported). Buffers as above: input and output in
// registered Metal buffers, filter and bias read on the CPU.
struct Conv2DTransposeArgs {
  const float* input;   // [N, OH, OW, O]
  const float* filter;  // [KH, KW, C/G, O]
  const float* bias;    // [C] or nullptr
  Activation activation;
  float* output;        // [N, H, W, C]
};
BackendStatus Conv2DTransposeMetal(const Conv2DGeometry& g, const Conv2DTransposeArgs& a,
                                   Accumulator acc = Accumulator::kFloat32);

}  // namespace conv
}  // namespace tfmps

#endif  // TFMPS_CONV_CONV_METAL_H_
