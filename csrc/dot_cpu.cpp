// The merge's adjoint on the CPU, the multi-dot: dots[k] = sum_j g[j] * inputs[k][j], exact fp32
// products summed in fp64, OpenMP threads, run-time ISA dispatch (the per-ISA bodies live with the
// merge's in merge_simd.h). It is what the gradient of a loss with respect to mixture weights needs
// (dL/dw_k = <dL/dtheta, theta_k>) and the Gram matrix of shard updates.
//
// Work split as the merge's: one contiguous range per thread (64-element boundaries). Each thread
// sums into its own K partials; they are added in thread order afterwards, so the result depends
// on the thread count only, never on scheduling.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu_common.h"
#include "merge_cpu.h"
#include "dot_kernels.h"
#include "shardmix_kernels.h"

namespace shardmix {
namespace {

constexpr int64_t kParallelMin = int64_t{1} << 15;  // elements below which one thread is used
constexpr int64_t kAlign = 64;

template <int DT>
SM_INLINE double load_f64(const void* p, int64_t i) {
  if constexpr (DT == kFloat32) return static_cast<const float*>(p)[i];
  else if constexpr (DT == kBFloat16) return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  else return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

template <int DT>
double dot_generic(const void* x, const float* g, int64_t lo, int64_t hi) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = lo; i < hi; ++i) s += static_cast<double>(g[i]) * load_f64<DT>(x, i);
  return s;
}

#if SHARDMIX_X86
constexpr auto* kDotAvx512 = dot_range_avx512;
constexpr auto* kDotAvx2 = dot_range_avx2;
#else  // off x86-64 active_isa() is always kGeneric
constexpr auto* kDotAvx512 = dot_range_generic;
constexpr auto* kDotAvx2 = dot_range_generic;
#endif

}  // namespace

void dot_range_generic(const DotArgs& a, int64_t lo, int64_t hi, double* acc) {
  for (int k = 0; k < a.K; ++k) {
    switch (a.in_dtypes[k]) {
      case kFloat32: acc[k] += dot_generic<kFloat32>(a.inputs[k], a.g, lo, hi); break;
      case kBFloat16: acc[k] += dot_generic<kBFloat16>(a.inputs[k], a.g, lo, hi); break;
      default: acc[k] += dot_generic<kFloat16>(a.inputs[k], a.g, lo, hi); break;
    }
  }
}

void multi_dot_cpu(const void* const* inputs, const int32_t* in_dtypes, int K, const float* g, int64_t n,
                   double* dots, int num_threads) {
  std::fill(dots, dots + K, 0.0);
  if (n <= 0 || K <= 0) return;
  const DotArgs args{inputs, in_dtypes, K, g};
  const Isa isa = active_isa();
  auto* body = isa == Isa::kAvx512 ? kDotAvx512 : isa == Isa::kAvx2 ? kDotAvx2 : dot_range_generic;
  const int T = n < kParallelMin ? 1 : std::max(1, num_threads);
  std::vector<double> partial(static_cast<size_t>(T) * K, 0.0);
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t units = (n + kAlign - 1) / kAlign;
    const int64_t lo = std::min(n, units * t / nt * kAlign), hi = std::min(n, units * (t + 1) / nt * kAlign);
    if (lo < hi) body(args, lo, hi, partial.data() + static_cast<size_t>(t) * K);
  }
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) dots[k] += partial[static_cast<size_t>(t) * K + k];
}

}  // namespace shardmix
