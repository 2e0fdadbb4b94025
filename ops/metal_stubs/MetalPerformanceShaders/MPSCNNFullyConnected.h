// The project's declarations of MPSCNNConvolution.h's MPSCNNFullyConnected(+Gradient)
// (included by MetalPerformanceShaders.h; what tf-mps uses, as Apple declares it).
#ifndef TFMPS_STUB_MPSCNNFULLYCONNECTED_H_
#define TFMPS_STUB_MPSCNNFULLYCONNECTED_H_

#endif  // TFMPS_STUB_MPSCNNFULLYCONNECTED_H_
