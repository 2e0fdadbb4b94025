// The project's declarations of MPSCNNPooling.h: MPSCNNPoolingMax/Average and their gradient kernels
// (included by MetalPerformanceShaders.h; what tf-mps uses, as Apple declares it).
#ifndef TFMPS_STUB_MPSCNNPOOLING_H_
#define TFMPS_STUB_MPSCNNPOOLING_H_

#endif  // TFMPS_STUB_MPSCNNPOOLING_H_
