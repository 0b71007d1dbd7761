// Raw-pointer API of the multi-dot, the merge's adjoint (dot_cpu.cpp, dot_cuda.cu; the per-ISA CPU
// bodies sit with the merge's in merge_simd.h). No torch headers. The torch binding is dot_ops.cpp.
#pragma once

#include <cstdint>

namespace shardmix {

// dots[k] = sum_j g[j] * inputs[k][j] for j < n, each product formed exactly in fp64 and summed in
// fp64; every input read once (g stays in cache across the K inputs of a block). g is fp32; inputs
// are DType codes of shardmix_kernels.h. Deterministic for a given thread count (per-thread partial
// sums added in thread order).
void multi_dot_cpu(const void* const* inputs, const int32_t* in_dtypes, int K, const float* g, int64_t n,
                   double* dots, int num_threads);

// multi_dot_cpu on the GPU. desc: device array of 2 * K uint64 slots (K input pointers, then K input
// DType codes); g fp32 and dots fp64 [K] are device pointers; partial: device scratch of
// multi_dot_cuda_scratch(K) doubles. Deterministic (fixed grid, per-block partials summed in order).
// Returns a cudaError_t (0 = success) from the launch checks.
int multi_dot_cuda(const uint64_t* desc, int K, const float* g, int64_t n, double* dots, double* partial,
                   void* stream);
int64_t multi_dot_cuda_scratch(int K);

}  // namespace shardmix
