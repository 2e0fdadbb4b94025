// BLAS for the CPU backend: Accelerate on macOS, the scipy-openblas32 wheel elsewhere.
// Families call these wrappers, never a vendor symbol directly, so the prefix of the
// scipy-openblas build (scipy_cblas_*) stays in one place.
#ifndef TFMPS_COMMON_BLAS_H_
#define TFMPS_COMMON_BLAS_H_

#include <string>

namespace tfmps {
namespace blas {

// C = alpha * op(A) * op(B) + beta * C, row-major, single precision.
void Sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a,
           int lda, const float* b, int ldb, float beta, float* c, int ldc);

// b[j*ldb + i] = a[i*lda + j] for a rows x cols matrix a (row-major): an out-of-place
// transpose, OpenBLAS's omatcopy kernels. Returns false where the BLAS has no such
// routine (Accelerate), and the caller transposes itself.
bool Transpose(int rows, int cols, const float* a, int lda, float* b, int ldb);

// BLAS's own thread pool (OpenBLAS keeps its threads apart from TF's; by default it
// sizes itself to the usable cores). Kernels that call a threaded BLAS routine from
// TF's pool must size it to avoid oversubscription; today's callers (omatcopy) are
// single-threaded.
void SetNumThreads(int n);
int NumThreads();

// "scipy-openblas32 0.3.x (OpenBLAS ... config)" or "Accelerate".
std::string Description();

}  // namespace blas
}  // namespace tfmps

#endif  // TFMPS_COMMON_BLAS_H_
