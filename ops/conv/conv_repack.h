// Filter layouts between TensorFlow and Metal Performance Shaders. Plain C++ (no Apple or
// TF types): conv_metal.mm calls it, and the tests reach it through the emulation's
// Python module.
//
//   HWIO  [KH][KW][Cg][O]   TensorFlow's filter (tf.nn.conv2d; Cg = C / groups)
//   OHWI  [O][KH][KW][Cg]   MPSCNNConvolutionDataSource -weights and
//                           MPSCNNConvolutionGradientState -gradientForWeights
//                           (for depthwise, Cg = 1: [O][KH][KW], MPS's depthwise layout)
//
//   ohwi[((o*KH + kh)*KW + kw)*Cg + c] = hwio[((kh*KW + kw)*Cg + c)*O + o]
//
// With P = KH*KW*Cg, HWIO is a P x O matrix and OHWI its O x P transpose, so both
// directions are one blocked transpose. Groups change nothing here: group g's output
// channels are the columns [g*Og, (g+1)*Og) of both layouts. Elements are moved as bits
// (float32, or float16 as uint16_t): no value changes.
#ifndef TFMPS_CONV_CONV_REPACK_H_
#define TFMPS_CONV_CONV_REPACK_H_

#include <cstddef>
#include <cstdint>

namespace tfmps {
namespace conv {

// The filter's dimensions, as conv.h's geometry names them (Cg = in_c_per_group).
struct FilterShape {
  int64_t k_h = 0, k_w = 0, in_c_per_group = 0, out_c = 0;
  int64_t elements() const { return k_h * k_w * in_c_per_group * out_c; }
};

// dst and src must not overlap; both hold s.elements() elements.
void HwioToOhwi(const FilterShape& s, const float* hwio, float* ohwi);
void OhwiToHwio(const FilterShape& s, const float* ohwi, float* hwio);
void HwioToOhwi(const FilterShape& s, const uint16_t* hwio, uint16_t* ohwi);  // float16 bits
void OhwiToHwio(const FilterShape& s, const uint16_t* ohwi, uint16_t* hwio);

// The weights of MPSCNNConvolutionTranspose that compute TF's conv2d_transpose (the input
// gradient of the convolution whose filter `hwio` is, with `groups` groups; s.out_c the
// transpose's source channels O, G * s.in_c_per_group its destination channels C):
//
//   out[((g*Cg + c)*KH + kh)*KW + kw)*Og + o] = hwio[(((KH-1-kh)*KW + (KW-1-kw))*Cg + c)*O + g*Og + o]
//
// [C][KH][KW][Og] (MPS's [outputFeatureChannels][kernelHeight][kernelWidth]
// [inputFeatureChannels / groups], Og = O / groups), rotated by 180 degrees: MPS applies the
// weights as given over the stride-expanded source (conv_metal.mm derives the rotation).
void HwioToTransposeWeights(const FilterShape& s, int64_t groups, const float* hwio, float* out);

}  // namespace conv
}  // namespace tfmps

#endif  // TFMPS_CONV_CONV_REPACK_H_
