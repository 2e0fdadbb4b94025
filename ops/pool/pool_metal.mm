// Metal backend of pooling (MPSCNNPoolingMax/Average and their gradient kernels) (see pool_metal.h).
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include "ops/common/metal_context.h"
#include "ops/pool/pool_metal.h"
