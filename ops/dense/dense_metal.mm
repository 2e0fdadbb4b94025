// Metal backend of the fully connected layer (MPSCNNFullyConnected and its gradient) (see dense_metal.h).
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include "ops/common/metal_context.h"
#include "ops/dense/dense_metal.h"
