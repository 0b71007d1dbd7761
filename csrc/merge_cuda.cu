// Fused weighted averaging on CUDA: outs[m][j] = sum_k W[m, k] * inputs[k][j], fp32 accumulation.
// Raw pointers and sizes only (no torch headers): plain nvcc compiles this file.
//
// Grid-stride loop over groups of 4 elements: with every pointer 16-byte aligned, fp32 inputs are
// read as float4 and 16-bit ones as one 8-byte load; per group of up to 4 outputs each thread keeps
// 4 x 4 fp32 accumulators in registers and reads its 4 elements of every input once. A scalar
// grid-stride loop handles the remainder (and everything when pointers are not aligned), in the
// same order: all inputs read, then the group's outputs written.
// Pointers, dtypes and weights are staged in shared memory once per block.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "shardmix_kernels.h"

namespace shardmix {
namespace {

constexpr int kThreads = 256;
constexpr int kGroup = 4;  // outputs accumulated together in registers

__device__ __forceinline__ float load1(const void* p, uint64_t dt, int64_t i) {
  if (dt == kFloat32) return __ldg(static_cast<const float*>(p) + i);
  if (dt == kBFloat16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return __half2float(static_cast<const __half*>(p)[i]);
}

__device__ __forceinline__ void store1(void* p, uint64_t dt, int64_t i, float v) {
  if (dt == kFloat32) static_cast<float*>(p)[i] = v;
  else if (dt == kBFloat16) static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<__half*>(p)[i] = __float2half_rn(v);
}

// Elements i..i+3 (i a multiple of 4, pointer 16-byte aligned).
__device__ __forceinline__ void load4(const void* p, uint64_t dt, int64_t i, float (&v)[4]) {
  if (dt == kFloat32) {
    const float4 f = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(p) + i));
    v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
  } else {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p) + i));
    const uint16_t h[4] = {static_cast<uint16_t>(raw.x & 0xFFFF), static_cast<uint16_t>(raw.x >> 16),
                           static_cast<uint16_t>(raw.y & 0xFFFF), static_cast<uint16_t>(raw.y >> 16)};
#pragma unroll
    for (int e = 0; e < 4; ++e)
      v[e] = dt == kBFloat16 ? __uint_as_float(static_cast<uint32_t>(h[e]) << 16)
                             : __half2float(__ushort_as_half(h[e]));
  }
}

__device__ __forceinline__ void store4(void* p, uint64_t dt, int64_t i, const float (&v)[4]) {
  if (dt == kFloat32) {
    *reinterpret_cast<float4*>(static_cast<float*>(p) + i) = make_float4(v[0], v[1], v[2], v[3]);
    return;
  }
  uint16_t h[4];
#pragma unroll
  for (int e = 0; e < 4; ++e)
    h[e] = dt == kBFloat16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v[e])) : __half_as_ushort(__float2half_rn(v[e]));
  *reinterpret_cast<uint2*>(static_cast<uint16_t*>(p) + i) =
      make_uint2(h[0] | (static_cast<uint32_t>(h[1]) << 16), h[2] | (static_cast<uint32_t>(h[3]) << 16));
}

__global__ void __launch_bounds__(kThreads) weighted_sum_kernel(const uint64_t* __restrict__ desc,
                                                                const float* __restrict__ weights, int K, int M,
                                                                int64_t n, bool aligned16) {
  extern __shared__ uint64_t smem[];
  const int nd = 2 * (K + M);
  float* s_w = reinterpret_cast<float*>(smem + nd);
  for (int i = threadIdx.x; i < nd; i += blockDim.x) smem[i] = desc[i];
  for (int i = threadIdx.x; i < M * K; i += blockDim.x) s_w[i] = weights[i];
  __syncthreads();
  const uint64_t* in = smem;
  const uint64_t* out = smem + K;
  const uint64_t* in_dt = smem + K + M;
  const uint64_t* out_dt = smem + 2 * K + M;

  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t nvec = aligned16 ? n / 4 : 0;
  for (int64_t v = tid; v < nvec; v += stride) {
    const int64_t i = v * 4;
    for (int m0 = 0; m0 < M; m0 += kGroup) {
      float acc[kGroup][4] = {};
      for (int k = 0; k < K; ++k) {
        float x[4];
        load4(reinterpret_cast<const void*>(in[k]), in_dt[k], i, x);
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          if (m0 + g >= M) break;
          const float w = s_w[(m0 + g) * K + k];
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[g][e] = fmaf(w, x[e], acc[g][e]);
        }
      }
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
        if (m0 + g < M) store4(reinterpret_cast<void*>(out[m0 + g]), out_dt[m0 + g], i, acc[g]);
    }
  }
  // The scalar path keeps the vector path's order too: per group of up to 4 outputs, every input
  // element is read before any output element is written, so an output that is an input
  // (M <= kGroup, see merge_alias_safe in checks.h) never feeds an overwritten value to the next.
  for (int64_t i = nvec * 4 + tid; i < n; i += stride) {
    for (int m0 = 0; m0 < M; m0 += kGroup) {
      float acc[kGroup] = {};
      for (int k = 0; k < K; ++k) {
        const float x = load1(reinterpret_cast<const void*>(in[k]), in_dt[k], i);
#pragma unroll
        for (int g = 0; g < kGroup; ++g)
          if (m0 + g < M) acc[g] = fmaf(s_w[(m0 + g) * K + k], x, acc[g]);
      }
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
        if (m0 + g < M) store1(reinterpret_cast<void*>(out[m0 + g]), out_dt[m0 + g], i, acc[g]);
    }
  }
}

}  // namespace

int weighted_sum_cuda(const uint64_t* desc, const float* weights, int K, int M, int64_t n, bool aligned16,
                      void* stream) {
  if (n <= 0) return static_cast<int>(cudaSuccess);
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t work = aligned16 ? (n + 3) / 4 : n;
  const int64_t max_blocks = static_cast<int64_t>(sms > 0 ? sms : 80) * 8;  // enough to fill the GPU
  const int blocks = static_cast<int>(std::min<int64_t>(max_blocks, (work + kThreads - 1) / kThreads));
  const size_t smem = 2 * (K + M) * sizeof(uint64_t) + static_cast<size_t>(M) * K * sizeof(float);
  weighted_sum_kernel<<<blocks, kThreads, smem, static_cast<cudaStream_t>(stream)>>>(desc, weights, K, M, n, aligned16);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace shardmix
