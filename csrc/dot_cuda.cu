// The merge's adjoint on CUDA, the multi-dot: dots[k] = sum_j g[j] * inputs[k][j], exact fp32
// products summed in fp64. Raw pointers and sizes only (no torch headers): plain nvcc compiles it.
//
// Pass 1: a fixed grid of blocks; each thread walks the elements grid-stride, reads g[j] once and
// every input's element j once, and keeps K fp64 sums in registers (inputs go kMaxK at a time; the
// host loops over groups, re-reading g, which is one stream among K + 1). A block reduces its
// threads' sums (warp shuffles, then shared memory) into partial[block][k]. Pass 2: one block per k
// adds the partials in block order. No atomics: the result is the same run to run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "dot_kernels.h"
#include "shardmix_kernels.h"

namespace shardmix {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxK = 8;      // inputs per pass-1 launch
constexpr int kBlocks = 1024;  // pass-1 grid (fixed: the partial buffer and the sum order depend on it)

__device__ __forceinline__ double load_d(const void* p, uint64_t dt, int64_t i) {
  if (dt == kFloat32) return static_cast<double>(__ldg(static_cast<const float*>(p) + i));
  if (dt == kBFloat16) return static_cast<double>(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
  return static_cast<double>(__half2float(static_cast<const __half*>(p)[i]));
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// partial[blockIdx.x * K_total + k0 + k] for k < kk.
__global__ void __launch_bounds__(kThreads) dot_pass1(const uint64_t* __restrict desc, int K_total, int k0, int kk,
                                                      const float* __restrict g, int64_t n, double* __restrict partial) {
  __shared__ uint64_t ptr[kMaxK], dt[kMaxK];
  __shared__ double red[kThreads / 32][kMaxK];
  if (threadIdx.x < kk) {
    ptr[threadIdx.x] = desc[k0 + threadIdx.x];
    dt[threadIdx.x] = desc[K_total + k0 + threadIdx.x];
  }
  __syncthreads();
  double acc[kMaxK];
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) acc[k] = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride) {
    const double gj = static_cast<double>(__ldg(g + j));
#pragma unroll
    for (int k = 0; k < kMaxK; ++k)
      if (k < kk) acc[k] = fma(gj, load_d(reinterpret_cast<const void*>(ptr[k]), dt[k], j), acc[k]);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    const double s = warp_sum(acc[k]);
    if (lane == 0) red[warp][k] = s;
  }
  __syncthreads();
  if (threadIdx.x < kk) {
    double s = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) s += red[w][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.x) * K_total + k0 + threadIdx.x] = s;
  }
}

// dots[k] = sum over blocks of partial[b][k], in block order (one block per k).
__global__ void __launch_bounds__(kThreads) dot_pass2(const double* __restrict partial, int K, int blocks,
                                                      double* __restrict dots) {
  __shared__ double red[kThreads];
  const int k = blockIdx.x;
  // Each thread sums a contiguous run of blocks, then a fixed tree: the same order every run.
  const int per = (blocks + kThreads - 1) / kThreads;
  double s = 0.0;
  for (int b = threadIdx.x * per; b < min(blocks, (threadIdx.x + 1) * per); ++b) s += partial[static_cast<int64_t>(b) * K + k];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) dots[k] = red[0];
}

}  // namespace

int64_t multi_dot_cuda_scratch(int K) { return static_cast<int64_t>(kBlocks) * K; }

int multi_dot_cuda(const uint64_t* desc, int K, const float* g, int64_t n, double* dots, double* partial,
                   void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (K <= 0) return static_cast<int>(cudaSuccess);
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kBlocks, (n + kThreads - 1) / kThreads)));
  for (int k0 = 0; k0 < K; k0 += kMaxK) {
    dot_pass1<<<blocks, kThreads, 0, s>>>(desc, K, k0, std::min(kMaxK, K - k0), g, n, partial);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  dot_pass2<<<K, kThreads, 0, s>>>(partial, K, blocks, dots);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace shardmix
