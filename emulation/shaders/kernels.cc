// Every Metal kernel of tf-mps, compiled as C++ against include/metal_stdlib and
// registered for the fake compute pipelines. A new .metal file is included here and
// each of its kernels gets one TFMPS_EMU_KERNEL line.
#include <metal_stdlib>

#include "ops/optim/optim_kernels.metal"  // NOLINT(build/include)
#include "ops/device/device_kernels.metal"  // NOLINT(build/include)

#include "emulation/shaders/shaders.h"

TFMPS_EMU_KERNEL(tfmps_adam_f32);
TFMPS_EMU_KERNEL(tfmps_sgd_f32);
TFMPS_EMU_KERNEL(tfmps_rmsprop_f32);
TFMPS_EMU_KERNEL(tfmps_unary_f32);
TFMPS_EMU_KERNEL(tfmps_unary_f16);
TFMPS_EMU_KERNEL(tfmps_binary_f32);
TFMPS_EMU_KERNEL(tfmps_binary_f16);
TFMPS_EMU_KERNEL(tfmps_fill_f32);
TFMPS_EMU_KERNEL(tfmps_fill_f16);
TFMPS_EMU_KERNEL(tfmps_reduce_sum_f32);
TFMPS_EMU_KERNEL(tfmps_reduce_sum_f16);
TFMPS_EMU_KERNEL(tfmps_softmax_f32);
TFMPS_EMU_KERNEL(tfmps_softmax_f16);
TFMPS_EMU_KERNEL(tfmps_sparse_xent_i32_f32);
TFMPS_EMU_KERNEL(tfmps_sparse_xent_i64_f32);
TFMPS_EMU_KERNEL(tfmps_cast_i64_f32);
TFMPS_EMU_KERNEL(tfmps_cast_i32_f32);
TFMPS_EMU_KERNEL(tfmps_cast_bool_f32);
TFMPS_EMU_KERNEL(tfmps_cast_f32_i64);
TFMPS_EMU_KERNEL(tfmps_cast_f32_i32);
TFMPS_EMU_KERNEL(tfmps_cast_f32_bool);
TFMPS_EMU_KERNEL(tfmps_cast_i64_i32);
TFMPS_EMU_KERNEL(tfmps_cast_i32_i64);
TFMPS_EMU_KERNEL(tfmps_gather_f32);
TFMPS_EMU_KERNEL(tfmps_scatter_f32);
TFMPS_EMU_KERNEL(tfmps_cast_f16_f32);
TFMPS_EMU_KERNEL(tfmps_cast_f32_f16);
TFMPS_EMU_KERNEL(tfmps_copy_bytes);
