// CPU fakes of MPS's MPSCNNBatchNormalization.h, MPSCNNInstanceNormalization.h: the kernels, data sources, states and gradients.
// Linux emulation only; built with ARC. They compute with the CPU backend.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include "emulation/mps/mps_emu.h"
