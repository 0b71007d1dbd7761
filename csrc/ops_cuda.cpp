// CUDA implementations of the shardmix ops (schemas in ops.cpp). Built only when torch has CUDA
// and a toolkit is present (pipeline/kernels/build.py adds this file and -DSHARDMIX_WITH_CUDA).
// Kernels run on the current CUDA stream of the tensors' device; launch errors are checked.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "shardmix_kernels.h"
#include "xent_driver.h"

namespace shardmix {
namespace {

void check_launch(int err) { C10_CUDA_CHECK(static_cast<cudaError_t>(err)); }

void weighted_sum_cuda_op(at::TensorList inputs, at::ArrayRef<double> weights, at::TensorList outs) {
  check_merge(inputs, weights, outs, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  merge_alias_safe(inputs, outs, [&](at::TensorList targets) {
    const int K = static_cast<int>(inputs.size()), M = static_cast<int>(targets.size());
    // Descriptor: K input pointers, M output pointers, K input dtypes, M output dtypes (uint64 each).
    at::Tensor desc = at::empty({2 * (K + M)}, at::dtype(at::kLong));
    auto* d = reinterpret_cast<uint64_t*>(desc.data_ptr<int64_t>());
    bool aligned16 = true;
    for (int k = 0; k < K; ++k) {
      d[k] = reinterpret_cast<uint64_t>(inputs[k].const_data_ptr());
      d[K + M + k] = static_cast<uint64_t>(merge_dtype_code(inputs[k], "inputs"));
      aligned16 = aligned16 && d[k] % 16 == 0;
    }
    for (int m = 0; m < M; ++m) {
      d[K + m] = reinterpret_cast<uint64_t>(targets[m].data_ptr());
      d[2 * K + M + m] = static_cast<uint64_t>(merge_dtype_code(targets[m], "outs"));
      aligned16 = aligned16 && d[K + m] % 16 == 0;
    }
    const at::Tensor w = at::tensor(std::vector<float>(weights.begin(), weights.end()));
    // Stream-ordered copies; the caching allocator keeps the buffers valid until the kernel ran.
    const at::Tensor desc_dev = desc.to(inputs[0].device());
    const at::Tensor w_dev = w.to(inputs[0].device());
    check_launch(weighted_sum_cuda(reinterpret_cast<const uint64_t*>(desc_dev.const_data_ptr<int64_t>()),
                                   w_dev.const_data_ptr<float>(), K, M, inputs[0].numel(), aligned16,
                                   c10::cuda::getCurrentCUDAStream().stream()));
  });
}

at::Tensor linear_xent_cuda_op(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const at::Tensor& targets, int64_t ignore_index, int64_t chunk_tokens,
                               int64_t chunk_vocab) {
  check_xent(hidden, weight, bias, targets, chunk_tokens, chunk_vocab, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(hidden.device());
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  return linear_xent_driver(
      hidden, weight, bias, targets, ignore_index, chunk_tokens, chunk_vocab,
      [stream](const float* tile, int64_t rows, int64_t cols, int64_t ld, const int64_t* tg, int64_t col0, float* mx,
               float* sm, float* tl) { check_launch(lse_tile_update_cuda(tile, rows, cols, ld, tg, col0, mx, sm, tl, stream)); },
      [stream](const float* mx, const float* sm, const float* tl, const int64_t* tg, int64_t rows, int64_t ignore,
               float* nll) { check_launch(lse_finalize_cuda(mx, sm, tl, tg, rows, ignore, nll, stream)); });
}

}  // namespace
}  // namespace shardmix

TORCH_LIBRARY_IMPL(shardmix, CUDA, m) {
  m.impl("weighted_sum_", &shardmix::weighted_sum_cuda_op);
  m.impl("linear_xent", &shardmix::linear_xent_cuda_op);
}
