// Metal backend of batch and instance normalization (MPSCNNBatchNormalization, MPSCNNInstanceNormalization and their gradient kernels) (see norm_metal.h).
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include "ops/common/metal_context.h"
#include "ops/norm/norm_metal.h"
