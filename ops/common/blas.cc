#include "ops/common/blas.h"

#if defined(TFMPS_BLAS_ACCELERATE)
#include <Accelerate/Accelerate.h>
#elif defined(TFMPS_BLAS_SCIPY_OPENBLAS)
#include <cblas.h>  // scipy_openblas32's header: prefixed symbols (scipy_cblas_sgemm, ...)
#else
#error "tf-mps needs a BLAS: define TFMPS_BLAS_ACCELERATE or TFMPS_BLAS_SCIPY_OPENBLAS"
#endif

namespace tfmps {
namespace blas {

void Sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a,
           int lda, const float* b, int ldb, float beta, float* c, int ldc) {
#if defined(TFMPS_BLAS_SCIPY_OPENBLAS)
  scipy_cblas_sgemm(
#else
  cblas_sgemm(
#endif
      CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
      m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool Transpose(int rows, int cols, const float* a, int lda, float* b, int ldb) {
#if defined(TFMPS_BLAS_SCIPY_OPENBLAS)
  scipy_cblas_somatcopy(CblasRowMajor, CblasTrans, rows, cols, 1.0f, a, lda, b, ldb);
  return true;
#else
  (void)rows, (void)cols, (void)a, (void)lda, (void)b, (void)ldb;
  return false;
#endif
}

void SetNumThreads(int n) {
#if defined(TFMPS_BLAS_SCIPY_OPENBLAS)
  if (n > 0) scipy_openblas_set_num_threads(n);
#else
  (void)n;  // Accelerate sizes its own pool.
#endif
}

int NumThreads() {
#if defined(TFMPS_BLAS_SCIPY_OPENBLAS)
  return scipy_openblas_get_num_threads();
#else
  return 0;  // unknown: Accelerate decides
#endif
}

std::string Description() {
#if defined(TFMPS_BLAS_SCIPY_OPENBLAS)
  const char* config = scipy_openblas_get_config();
  return std::string("scipy-openblas32: ") + (config ? config : "?");
#else
  return "Accelerate";
#endif
}

}  // namespace blas
}  // namespace tfmps
