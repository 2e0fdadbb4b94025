// CPU fakes of MPS's MPSCNNPooling.h: MPSCNNPoolingMax/Average and their gradients.
// Linux emulation only; built with ARC. They compute with the CPU backend.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include "emulation/mps/mps_emu.h"
