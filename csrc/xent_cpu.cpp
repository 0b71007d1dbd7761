// Streaming cross-entropy on the CPU: the fused online log-sum-exp + target gather over one tile
// of logits. The GEMM that produces each tile runs in the binding layer (torch's MKL/oneDNN sgemm)
// so the op keeps GEMM speed while only a [token_chunk x vocab_chunk] tile ever exists.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu_common.h"
#include "shardmix_kernels.h"

namespace shardmix {
namespace {

// exp(x) for x <= 0 (arguments are logit - running max), vectorisable plain C: Cody-Waite range
// reduction and a degree-6 polynomial (Cephes expf), relative error ~1e-7. x < -87 flushes to 0.
SM_INLINE float exp_nonpos(float x) {
  const float xc = x > -87.0f ? x : -87.0f;
  const float t = xc * 1.44269504088896341f;
  const float fi = (t + 12582912.0f) - 12582912.0f;  // round to nearest integer (|t| < 2^22)
  const float r = (xc - fi * 0.693359375f) + fi * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fi) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float keep = x >= -87.0f ? 1.0f : 0.0f;  // branch-free select vectorises on every ISA
  return p * scale * keep;
}

SM_INLINE void lse_row(const float* __restrict x, int64_t cols, float* run_max, float* run_sum) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < cols; ++j) m = x[j] > m ? x[j] : m;
  const float old_max = *run_max;
  const float new_max = std::max(old_max, m);
  if (new_max == -std::numeric_limits<float>::infinity()) return;  // nothing but -inf so far
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < cols; ++j) s += exp_nonpos(x[j] - new_max);
  const float rescale = old_max == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(old_max - new_max);
  *run_sum = *run_sum * rescale + s;
  *run_max = new_max;
}

using RowFn = void (*)(const float*, int64_t, float*, float*);
SM_TARGET_AVX512 void lse_row_avx512(const float* x, int64_t cols, float* mx, float* sm) { lse_row(x, cols, mx, sm); }
SM_TARGET_AVX2 void lse_row_avx2(const float* x, int64_t cols, float* mx, float* sm) { lse_row(x, cols, mx, sm); }
void lse_row_generic(const float* x, int64_t cols, float* mx, float* sm) { lse_row(x, cols, mx, sm); }

}  // namespace

void lse_tile_update_cpu(const float* logits, int64_t rows, int64_t cols, int64_t ld, const int64_t* targets,
                         int64_t col0, float* run_max, float* run_sum, float* tgt_logit, int num_threads) {
  const Isa isa = active_isa();
  const RowFn row_fn = isa == Isa::kAvx512 ? lse_row_avx512 : isa == Isa::kAvx2 ? lse_row_avx2 : lse_row_generic;
  const int threads = rows * cols < (int64_t{1} << 15) ? 1 : num_threads;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits + r * ld;
    row_fn(x, cols, run_max + r, run_sum + r);
    const int64_t t = targets[r] - col0;
    if (t >= 0 && t < cols) tgt_logit[r] = x[t];
  }
}

void lse_finalize_cpu(const float* run_max, const float* run_sum, const float* tgt_logit, const int64_t* targets,
                      int64_t rows, int64_t ignore_index, float* nll) {
  for (int64_t r = 0; r < rows; ++r)
    nll[r] = targets[r] == ignore_index ? 0.0f : run_max[r] + std::log(run_sum[r]) - tgt_logit[r];
}

}  // namespace shardmix
