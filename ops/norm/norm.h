// Batch and instance normalization: the backend interface of the norm family.
//
// Layout: channels last, any rank. The glue views x as [G, R, C] (row-major):
//   batch norm     G = 1, R = product of every dimension but the last (N*H*W for NHWC)
//   instance norm  G = N (the batch), R = product of the spatial dimensions (H*W)
// gamma, beta [C]; statistics mean, variance, inv_std [G, C] ([C] for batch norm).
// x, y, dy, dx are float32 or float16 (Half); everything else is float32, and every
// computation is float32 (float16 data converted on load, rounded once on store), with
// the statistics summed as described below.
//
// Forward, training (statistics of the data; instance norm always):
//   mean[g,c]     = (1/R) sum_r x[g,r,c]
//   variance[g,c] = (1/R) sum_r (x[g,r,c] - mean[g,c])^2        (biased, as tf.nn.moments)
//   inv_std[g,c]  = 1 / sqrt(variance[g,c] + epsilon)
//   y[g,r,c]      = (x[g,r,c] - mean[g,c]) * (gamma[c] * inv_std[g,c]) + beta[c]
// Forward, inference (batch norm with given mean_in, variance_in [C]): the same y with
//   mean = mean_in, inv_std = 1 / sqrt(variance_in + epsilon).
// R = 0 (an empty batch or image): mean, variance and inv_std are NaN, as TF's
// FusedBatchNormV3 gives; y is empty.
//
// Backward (dy = dL/dy; gm, gv = dL/dmean, dL/dvariance of the statistics outputs, zero
// when absent; xhat = (x - mean) * inv_std):
//   dbeta[c]  = sum_{g,r} dy[g,r,c]
//   dgamma[c] = sum_{g,r} dy[g,r,c] * xhat[g,r,c]
//   training:  with S1[g,c] = sum_r dy, S2[g,c] = sum_r dy * xhat (per group),
//     dx = gamma*inv_std * (dy - S1/R - xhat * S2/R) + (gm + 2 * gv * (x - mean)) / R
//   computed per (g, c) as an affine map of dy and (x - mean), the mean of dy and the
//   xhat term cancelling before the scaling by A (exactly 0 for R = 1):
//     dx = A*(dy + B'*(x - mean) + C') + (E*(x - mean) + F),  A = gamma*inv_std,
//     B' = -inv_std*S2/R,  C' = -S1/R,  E = 2*gv/R,  F = gm/R
//   inference: dx = gamma*inv_std*dy (mean and variance are constants here; their
//   gradients, -A*dbeta and -A*inv_std/2*dgamma, are formed by the Python wrapper).
//
// Summation (deterministic: the same bits for any thread count): rows are cut into
// fixed blocks of about kBlockElements values, independent of the thread count. Each block
// sums in float32 in row order, in two passes while it is in L1: its mean m_b, then
// sum (x - m_b) and sum (x - m_b)^2 (the shifted sums make the variance as good as a
// two-pass over the whole tensor); blocks are combined in float64 in block order:
//   mean = sum_b (n_b m_b + sum_b d) / R,
//   R*variance = sum_b [sum_b d^2 + 2 (m_b - mean) sum_b d + n_b (m_b - mean)^2].
// The backward sums (dy, dy*(x - mean)) are float32 per block and float64 across blocks.
// Vectorized over channels; with C < 64 several rows form one vector-wide "super-row"
// (lanes folded back per channel at the end of each block).
#ifndef TFMPS_NORM_NORM_H_
#define TFMPS_NORM_NORM_H_

#include <cstdint>

#include "ops/common/backend.h"

namespace tfmps {
namespace norm {

// IEEE binary16 storage, bit-compatible with TensorFlow's DT_HALF (Eigen::half).
struct Half {
  uint16_t bits;
};
static_assert(sizeof(Half) == 2, "16-bit storage");

enum class DataType { kFloat32, kFloat16 };

// x viewed as [groups, rows, channels]. The glue guarantees groups, channels >= 1
// (empty tensors never reach the backend, except rows == 0, the empty-statistics case).
struct NormShape {
  int64_t groups = 1, rows = 0, channels = 0;
};

struct ForwardArgs {
  DataType dtype = DataType::kFloat32;
  const void* x = nullptr;          // [G, R, C]
  const float* gamma = nullptr;     // [C]
  const float* beta = nullptr;      // [C]
  const float* mean_in = nullptr;   // [C] inference only, else nullptr
  const float* var_in = nullptr;    // [C] inference only, else nullptr
  float epsilon = 1e-3f;
  void* y = nullptr;                // [G, R, C]
  float* mean = nullptr;            // [G, C] batch statistics (inference: mean_in)
  float* variance = nullptr;        // [G, C] (inference: var_in)
  float* inv_std = nullptr;         // [G, C]
};

struct BackwardArgs {
  DataType dtype = DataType::kFloat32;
  bool training = true;
  const void* dy = nullptr;                 // [G, R, C]
  const void* x = nullptr;                  // [G, R, C]
  const float* gamma = nullptr;             // [C]
  const float* mean = nullptr;              // [G, C] as the forward used it
  const float* inv_std = nullptr;           // [G, C]
  const float* mean_backprop = nullptr;     // [G, C] or nullptr (zero); training only
  const float* variance_backprop = nullptr; // [G, C] or nullptr (zero); training only
  void* dx = nullptr;                       // [G, R, C]
  float* gamma_backprop = nullptr;          // [C]
  float* beta_backprop = nullptr;           // [C]
};

// ------------------------------------------------------------------ CPU backend
// Runs on `parallel` (TF's intra-op pool). It needs a float64 workspace of the size the
// *Workspace function returns (the per-block partial sums); the glue allocates it.
int64_t ForwardCpuWorkspace(const NormShape& s, bool training);
int64_t BackwardCpuWorkspace(const NormShape& s, bool training);
void ForwardCpu(const NormShape& s, const ForwardArgs& a, double* workspace, const ParallelFor& parallel);
void BackwardCpu(const NormShape& s, const BackwardArgs& a, double* workspace, const ParallelFor& parallel);

// Which build of the loops runs: "avx2" (x86-64 with AVX2, FMA and F16C) or "base";
// TFMPS_NORM_ISA=base narrows it (read once per process).
const char* NormCpuIsa();

}  // namespace norm
}  // namespace tfmps

#endif  // TFMPS_NORM_NORM_H_
