// Streaming cross-entropy on CUDA: fused online log-sum-exp + target gather over one tile of
// logits (the tile GEMM runs in cuBLAS through torch in the binding). Raw pointers only: plain
// nvcc compiles this file.
//
// One block per row (grid-stride over rows): each thread folds its strided columns into a running
// (max, sum-of-exp) pair (float4 loads when the row is 16-byte aligned), then warp shuffles and a
// shared-memory pass combine the pairs; thread 0 merges the tile into the row's running state.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "shardmix_kernels.h"

namespace shardmix {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct MaxSum {
  float m;  // running max (-inf: nothing seen)
  float s;  // sum of exp(x - m)
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ void fold(MaxSum& acc, float x) {
  if (x == -INFINITY) return;
  if (x > acc.m) {
    acc.s = (acc.m == -INFINITY ? 0.0f : acc.s * expf(acc.m - x)) + 1.0f;
    acc.m = x;
  } else {
    acc.s += expf(x - acc.m);
  }
}

__global__ void __launch_bounds__(kThreads) lse_tile_update_kernel(const float* __restrict__ logits, int64_t rows,
                                                                   int64_t cols, int64_t ld,
                                                                   const int64_t* __restrict__ targets, int64_t col0,
                                                                   float* run_max, float* run_sum, float* tgt_logit) {
  __shared__ MaxSum warp_part[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* x = logits + r * ld;
    MaxSum acc{-INFINITY, 0.0f};
    int64_t j0 = 0;
    if ((reinterpret_cast<uintptr_t>(x) & 15) == 0) {
      const int64_t nvec = cols / 4;
      const float4* x4 = reinterpret_cast<const float4*>(x);
      for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
        const float4 f = __ldg(x4 + v);
        fold(acc, f.x); fold(acc, f.y); fold(acc, f.z); fold(acc, f.w);
      }
      j0 = nvec * 4;
    }
    for (int64_t j = j0 + threadIdx.x; j < cols; j += blockDim.x) fold(acc, __ldg(x + j));
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const MaxSum other{__shfl_xor_sync(0xffffffffu, acc.m, off), __shfl_xor_sync(0xffffffffu, acc.s, off)};
      acc = combine(acc, other);
    }
    if (lane == 0) warp_part[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
      MaxSum tile = warp_part[0];
      for (int w = 1; w < kWarps; ++w) tile = combine(tile, warp_part[w]);
      const MaxSum merged = combine({run_max[r], run_sum[r]}, tile);
      run_max[r] = merged.m;
      run_sum[r] = merged.s;
      const int64_t t = targets[r] - col0;
      if (t >= 0 && t < cols) tgt_logit[r] = x[t];
    }
    __syncthreads();  // warp_part is reused by the next row
  }
}

__global__ void lse_finalize_kernel(const float* __restrict__ run_max, const float* __restrict__ run_sum,
                                    const float* __restrict__ tgt_logit, const int64_t* __restrict__ targets,
                                    int64_t rows, int64_t ignore_index, float* __restrict__ nll) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += stride)
    nll[r] = targets[r] == ignore_index ? 0.0f : run_max[r] + logf(run_sum[r]) - tgt_logit[r];
}

inline int grid_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

}  // namespace

int lse_tile_update_cuda(const float* logits, int64_t rows, int64_t cols, int64_t ld, const int64_t* targets,
                         int64_t col0, float* run_max, float* run_sum, float* tgt_logit, void* stream) {
  if (rows <= 0) return static_cast<int>(cudaSuccess);
  lse_tile_update_kernel<<<grid_for(rows, 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, rows, cols, ld, targets, col0, run_max, run_sum, tgt_logit);
  return static_cast<int>(cudaGetLastError());
}

int lse_finalize_cuda(const float* run_max, const float* run_sum, const float* tgt_logit, const int64_t* targets,
                      int64_t rows, int64_t ignore_index, float* nll, void* stream) {
  if (rows <= 0) return static_cast<int>(cudaSuccess);
  lse_finalize_kernel<<<grid_for(rows, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      run_max, run_sum, tgt_logit, targets, rows, ignore_index, nll);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace shardmix
