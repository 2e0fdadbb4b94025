// Arguments of the device's own Metal kernels (device_kernels.metal), shared by the host
// (device_ops_metal.mm) and the shaders: 4-byte fields only, fixed-size arrays, no
// pointers, so Metal's constant address space and C++ read one layout.
#ifndef TFMPS_DEVICE_DEVICE_KERNELS_H_
#define TFMPS_DEVICE_DEVICE_KERNELS_H_

#ifdef __METAL_VERSION__
typedef uint tfmps_u32;
#else
#include <cstdint>
typedef uint32_t tfmps_u32;
#endif

#define TFMPS_MAX_DIMS 6

// Element-wise work over an output of `n` elements with `rank` dims (innermost last):
// input k of the output element at coordinates c is x_k[sum_d c[d] * strides_k[d]]
// (stride 0 along a broadcast dim). `op` is a TfmpsUnary/TfmpsBinary value.
struct TfmpsEltwiseArgs {
  tfmps_u32 n, op, rank, pad;
  tfmps_u32 dims[TFMPS_MAX_DIMS];
  tfmps_u32 xs[TFMPS_MAX_DIMS];
  tfmps_u32 ys[TFMPS_MAX_DIMS];
  float value;  // Fill's value
  tfmps_u32 pad1, pad2, pad3;
};

// Unary ops: y = f(x).
#define TFMPS_UNARY_COPY 0
#define TFMPS_UNARY_NEG 1
#define TFMPS_UNARY_SQUARE 2
#define TFMPS_UNARY_SQRT 3
#define TFMPS_UNARY_RSQRT 4
#define TFMPS_UNARY_EXP 5
#define TFMPS_UNARY_LOG 6
#define TFMPS_UNARY_RELU 7
#define TFMPS_UNARY_ABS 8
#define TFMPS_UNARY_TANH 9
#define TFMPS_UNARY_SIGMOID 10
#define TFMPS_UNARY_RECIPROCAL 11
#define TFMPS_UNARY_SIGN 12

// Binary ops: z = f(x, y), broadcasting.
#define TFMPS_BINARY_ADD 0
#define TFMPS_BINARY_SUB 1
#define TFMPS_BINARY_MUL 2
#define TFMPS_BINARY_DIV 3
#define TFMPS_BINARY_DIV_NO_NAN 4
#define TFMPS_BINARY_MAXIMUM 5
#define TFMPS_BINARY_MINIMUM 6
#define TFMPS_BINARY_SQUARED_DIFFERENCE 7
#define TFMPS_BINARY_POW 8
#define TFMPS_BINARY_RELU_GRAD 9  // x: gradients, y: features

// Sum over the middle axis of [outer, reduce, inner], divided by `divisor` (reduce for a
// mean, as TensorFlow divides; 1 for a sum).
struct TfmpsReduceArgs {
  tfmps_u32 outer, reduce, inner, pad;
  float divisor;
  tfmps_u32 pad1, pad2, pad3;
};

// Row-wise softmax and sparse softmax cross entropy over [rows, cols].
struct TfmpsRowsArgs {
  tfmps_u32 rows, cols, log, pad;
};

// Gather and scatter over rows of `row` elements, `count` indices (int32, checked).
struct TfmpsIndexedArgs {
  tfmps_u32 count, row, op, scalar;
};
#define TFMPS_SCATTER_ADD 0
#define TFMPS_SCATTER_SUB 1
#define TFMPS_SCATTER_UPDATE 2

#ifndef __METAL_VERSION__
// (No namespace named "device": the emulation's <metal_stdlib> defines that word away.)
namespace tfmps {
// device_kernels.metal with this header inlined (cmake/embed_metal.cmake).
extern const char kDeviceKernelsSource[];
}  // namespace tfmps
#endif

#endif  // TFMPS_DEVICE_DEVICE_KERNELS_H_
