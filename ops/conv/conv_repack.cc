// HWIO <-> OHWI filter repacking (conv_repack.h): a blocked transpose of a P x O matrix,
// P = KH*KW*Cg. Blocks of 32 x 32 keep both the rows read and the rows written in cache
// for the large filters (3x3x256x256 is 2.4 MB), and the inner loop is contiguous on
// the destination side.
#include "ops/conv/conv_repack.h"

#include <algorithm>

namespace tfmps {
namespace conv {
namespace {

constexpr int64_t kBlock = 32;

// dst[j * rows + i] = src[i * cols + j] for a rows x cols src.
template <typename T>
void Transpose(int64_t rows, int64_t cols, const T* src, T* dst) {
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    const int64_t i1 = std::min(rows, i0 + kBlock);
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      const int64_t j1 = std::min(cols, j0 + kBlock);
      for (int64_t j = j0; j < j1; ++j) {
        T* out = dst + j * rows;
        for (int64_t i = i0; i < i1; ++i) out[i] = src[i * cols + j];
      }
    }
  }
}

int64_t Patch(const FilterShape& s) { return s.k_h * s.k_w * s.in_c_per_group; }

}  // namespace

void HwioToOhwi(const FilterShape& s, const float* hwio, float* ohwi) { Transpose(Patch(s), s.out_c, hwio, ohwi); }
void OhwiToHwio(const FilterShape& s, const float* ohwi, float* hwio) { Transpose(s.out_c, Patch(s), ohwi, hwio); }
void HwioToOhwi(const FilterShape& s, const uint16_t* hwio, uint16_t* ohwi) {
  Transpose(Patch(s), s.out_c, hwio, ohwi);
}
void OhwiToHwio(const FilterShape& s, const uint16_t* ohwi, uint16_t* hwio) {
  Transpose(s.out_c, Patch(s), ohwi, hwio);
}

void HwioToTransposeWeights(const FilterShape& s, int64_t groups, const float* hwio, float* out) {
  const int64_t KH = s.k_h, KW = s.k_w, Cg = s.in_c_per_group, O = s.out_c, Og = O / groups;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t kh = 0; kh < KH; ++kh)
        for (int64_t kw = 0; kw < KW; ++kw) {
          const float* src = hwio + (((KH - 1 - kh) * KW + (KW - 1 - kw)) * Cg + c) * O + g * Og;
          float* dst = out + (((g * Cg + c) * KH + kh) * KW + kw) * Og;
          std::copy(src, src + Og, dst);
        }
}

}  // namespace conv
}  // namespace tfmps
