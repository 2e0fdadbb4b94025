// CPU fakes of MPS's MPSCNNConvolution.h: MPSCNNConvolutionTranspose(+Gradient).
// Linux emulation only; built with ARC. They compute with the CPU backend.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include "emulation/mps/mps_emu.h"
