// The torch binding of the multi-dot on the CPU (schema below; CUDA in dot_ops_cuda.cpp):
//   multi_dot(Tensor[] inputs, Tensor g) -> Tensor    [K] float64: dots[k] = sum_j g[j] * inputs[k][j]
// Its own binding file beside ops.cpp (merge, cross-entropy), so that a change to one op family
// rebuilds only what calls it (dvc.yaml lists each stage's kernel sources).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "dot_checks.h"
#include "dot_kernels.h"

namespace shardmix {
namespace {

at::Tensor multi_dot_cpu_op(at::TensorList inputs, const at::Tensor& g) {
  const std::vector<int32_t> dts = check_dot(inputs, g, c10::DeviceType::CPU);
  const int K = static_cast<int>(inputs.size());
  std::vector<const void*> ptrs(K);
  for (int k = 0; k < K; ++k) ptrs[k] = inputs[k].const_data_ptr();
  at::Tensor dots = at::empty({K}, g.options().dtype(at::kDouble));
  multi_dot_cpu(ptrs.data(), dts.data(), K, g.const_data_ptr<float>(), g.numel(), dots.data_ptr<double>(),
                at::get_num_threads());
  return dots;
}

}  // namespace
}  // namespace shardmix

TORCH_LIBRARY_FRAGMENT(shardmix, m) { m.def("multi_dot(Tensor[] inputs, Tensor g) -> Tensor"); }

TORCH_LIBRARY_IMPL(shardmix, CPU, m) { m.impl("multi_dot", &shardmix::multi_dot_cpu_op); }
