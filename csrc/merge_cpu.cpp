// Fused weighted averaging on the CPU: outs[m] = sum_k W[m, k] * inputs[k], one pass over the
// inputs, fp32 accumulation, OpenMP threads, run-time ISA dispatch.
//
// Work split: each thread owns one contiguous range (boundaries on 64-element multiples, so
// vector stores stay aligned). AVX-512/AVX2 CPUs run the register-blocked kernels of
// merge_simd.h (all K inputs stream together, accumulators in registers, non-temporal stores for
// large outputs). This file holds the dispatcher and the baseline (any x86-64) kernel: a blocked
// loop that accumulates into small fp32 buffers in L1/L2, written as plain unit-stride loops that
// gcc vectorises (a flat per-element loop over K pointers makes gcc emit gathers: ~8x slower).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "cpu_common.h"
#if SHARDMIX_X86
#include <immintrin.h>
#endif
#include "merge_cpu.h"
#include "shardmix_kernels.h"

namespace shardmix {
namespace {

constexpr int64_t kParallelMin = int64_t{1} << 15;     // elements below which one thread is used
constexpr int64_t kStreamMinBytes = int64_t{1} << 23;  // output size from which stores bypass cache
constexpr int64_t kAlign = 64;                         // elements; thread ranges start on multiples

template <int DT>
SM_INLINE float load_f32(const void* p, int64_t i) {
  if constexpr (DT == kFloat32) return static_cast<const float*>(p)[i];
  else if constexpr (DT == kBFloat16) return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  else return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

// acc[i] = w * x[i] (first input) or acc[i] += w * x[i].
template <int DT>
SM_INLINE void accumulate(float* __restrict acc, const void* __restrict x, float w, int64_t len, bool first) {
  if (first) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) acc[i] = w * load_f32<DT>(x, i);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) acc[i] += w * load_f32<DT>(x, i);
  }
}

SM_INLINE void store_block(void* out, int32_t dt, const float* __restrict acc, int64_t len) {
  if (dt == kFloat32) {
    std::memcpy(out, acc, len * sizeof(float));
    return;
  }
  uint16_t* __restrict dst = static_cast<uint16_t*>(out);
  if (dt == kBFloat16) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dst[i] = f32_to_bf16(acc[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dst[i] = f32_to_f16(acc[i]);
  }
}

inline size_t elem_size(int32_t dt) { return dt == kFloat32 ? 4 : 2; }

// Split [0, n) into per-thread ranges whose boundaries are multiples of kAlign.
inline void thread_range(int64_t n, int64_t* lo, int64_t* hi) {
  const int64_t units = (n + kAlign - 1) / kAlign;
  const int t = omp_get_thread_num(), T = omp_get_num_threads();
  *lo = std::min(n, units * t / T * kAlign);
  *hi = std::min(n, units * (t + 1) / T * kAlign);
}

inline int thread_count(int64_t n, int requested) {
  return n < kParallelMin ? 1 : std::max(1, requested);
}

// Order streaming (non-temporal) stores before the caller reads the outputs.
inline void store_fence() {
#if SHARDMIX_X86
  _mm_sfence();
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

#if SHARDMIX_X86
constexpr auto* kMergeAvx512 = merge_range_avx512;
constexpr auto* kMergeAvx2 = merge_range_avx2;
constexpr auto* kTriadAvx512 = triad_range_avx512;
constexpr auto* kTriadAvx2 = triad_range_avx2;
#else  // no per-ISA kernels off x86-64: active_isa() is always kGeneric there
constexpr auto* kMergeAvx512 = merge_range_generic;
constexpr auto* kMergeAvx2 = merge_range_generic;
constexpr auto* kTriadAvx512 = triad_range_generic;
constexpr auto* kTriadAvx2 = triad_range_generic;
#endif

}  // namespace

// Baseline kernel (also finishes the last partial tile of the SIMD kernels).
void merge_range_generic(const MergeArgs& a, int64_t lo, int64_t hi) {
  // Block length: M accumulators + one input block stay within L1/L2; multiple of 64.
  const int64_t B = std::min<int64_t>(std::max<int64_t>(256, (int64_t{1} << 13) / a.M / 64 * 64), hi - lo);
  std::vector<float> acc_storage(static_cast<size_t>(a.M) * B);
  float* acc = acc_storage.data();
  for (int64_t off = lo; off < hi; off += B) {
    const int64_t len = std::min(B, hi - off);
    for (int k = 0; k < a.K; ++k) {
      const int32_t dt = a.in_dtypes[k];
      const void* x = static_cast<const char*>(a.inputs[k]) + off * elem_size(dt);
      for (int m = 0; m < a.M; ++m) {
        const float w = a.weights[m * a.K + k];
        float* accm = acc + m * B;
        if (dt == kFloat32) accumulate<kFloat32>(accm, x, w, len, k == 0);
        else if (dt == kBFloat16) accumulate<kBFloat16>(accm, x, w, len, k == 0);
        else accumulate<kFloat16>(accm, x, w, len, k == 0);
      }
    }
    for (int m = 0; m < a.M; ++m)
      store_block(static_cast<char*>(a.outs[m]) + off * elem_size(a.out_dtypes[m]), a.out_dtypes[m], acc + m * B, len);
  }
}

void triad_range_generic(float* a, const float* b, const float* c, float s, int64_t lo, int64_t hi, bool /*nt*/) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) a[i] = b[i] + s * c[i];
}

const char* cpu_isa() { return isa_name(active_isa()); }

void weighted_sum_cpu(const void* const* inputs, const int32_t* in_dtypes, int K, void* const* outs,
                      const int32_t* out_dtypes, int M, const float* weights, int64_t n, int num_threads) {
  if (n <= 0 || K <= 0 || M <= 0) return;
  int64_t out_bytes = 0;
  for (int m = 0; m < M; ++m) out_bytes += n * static_cast<int64_t>(elem_size(out_dtypes[m]));
  // Large outputs go around the cache (no read-for-ownership, no eviction of the inputs);
  // small ones (e.g. a parameter about to be used) stay cached.
  std::vector<uint8_t> stream(M);
  for (int m = 0; m < M; ++m)
    stream[m] = out_bytes >= kStreamMinBytes && (reinterpret_cast<uintptr_t>(outs[m]) % 64) == 0;
  const MergeArgs args{inputs, in_dtypes, K, outs, out_dtypes, stream.data(), M, weights};
  const Isa isa = active_isa();
  auto* body = isa == Isa::kAvx512 ? kMergeAvx512 : isa == Isa::kAvx2 ? kMergeAvx2 : merge_range_generic;
#pragma omp parallel num_threads(thread_count(n, num_threads))
  {
    int64_t lo, hi;
    thread_range(n, &lo, &hi);
    if (lo < hi) body(args, lo, hi);
    store_fence();
  }
}

void triad_cpu(float* a, const float* b, const float* c, float s, int64_t n, int num_threads, bool nontemporal) {
  if (n <= 0) return;
  const Isa isa = active_isa();
  auto* body = isa == Isa::kAvx512 ? kTriadAvx512 : isa == Isa::kAvx2 ? kTriadAvx2 : triad_range_generic;
  const bool nt = nontemporal && (reinterpret_cast<uintptr_t>(a) % 64) == 0;
#pragma omp parallel num_threads(thread_count(n, num_threads))
  {
    int64_t lo, hi;
    thread_range(n, &lo, &hi);
    if (lo < hi) body(a, b, c, s, lo, hi, nt);
    store_fence();
  }
}

}  // namespace shardmix
