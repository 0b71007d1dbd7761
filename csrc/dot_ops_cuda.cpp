// The torch binding of the multi-dot on CUDA (schema in dot_ops.cpp). Built only with CUDA, like
// ops_cuda.cpp; runs on the current stream of g's device; launch errors are checked.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <vector>

#include "dot_checks.h"
#include "dot_kernels.h"

namespace shardmix {
namespace {

at::Tensor multi_dot_cuda_op(at::TensorList inputs, const at::Tensor& g) {
  const std::vector<int32_t> dts = check_dot(inputs, g, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(g.device());
  const int K = static_cast<int>(inputs.size());
  at::Tensor desc = at::empty({2 * K}, at::dtype(at::kLong));  // K input pointers, then K dtypes
  auto* d = reinterpret_cast<uint64_t*>(desc.data_ptr<int64_t>());
  for (int k = 0; k < K; ++k) {
    d[k] = reinterpret_cast<uint64_t>(inputs[k].const_data_ptr());
    d[K + k] = static_cast<uint64_t>(dts[k]);
  }
  // Stream-ordered copy; the caching allocator keeps the buffers valid until the kernels ran.
  const at::Tensor desc_dev = desc.to(g.device());
  at::Tensor partial = at::empty({multi_dot_cuda_scratch(K)}, g.options().dtype(at::kDouble));
  at::Tensor dots = at::empty({K}, g.options().dtype(at::kDouble));
  C10_CUDA_CHECK(static_cast<cudaError_t>(multi_dot_cuda(
      reinterpret_cast<const uint64_t*>(desc_dev.const_data_ptr<int64_t>()), K, g.const_data_ptr<float>(), g.numel(),
      dots.data_ptr<double>(), partial.data_ptr<double>(), c10::cuda::getCurrentCUDAStream().stream())));
  return dots;
}

}  // namespace
}  // namespace shardmix

TORCH_LIBRARY_IMPL(shardmix, CUDA, m) { m.impl("multi_dot", &shardmix::multi_dot_cuda_op); }
