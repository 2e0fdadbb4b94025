// The project's declarations of MPSCNNBatchNormalization.h and MPSCNNInstanceNormalization.h: the kernels, their data sources, states and gradient kernels
// (included by MetalPerformanceShaders.h; what tf-mps uses, as Apple declares it).
#ifndef TFMPS_STUB_MPSCNNNORMALIZATION_H_
#define TFMPS_STUB_MPSCNNNORMALIZATION_H_

#endif  // TFMPS_STUB_MPSCNNNORMALIZATION_H_
