// Torch binding of the shardmix kernels: op schemas (TORCH_LIBRARY) and the CPU implementations.
// The CUDA implementations are registered in ops_cuda.cpp (built only with a CUDA toolkit).
//
// Ops (namespace `shardmix`, inference only, no autograd):
//   weighted_sum_(Tensor[] inputs, float[] weights, Tensor(a!)[] outs) -> ()
//       outs[m] = sum_k weights[m * K + k] * inputs[k]   (fp32 accumulate, outputs written in place)
//   linear_xent(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, int ignore_index,
//               int chunk_tokens, int chunk_vocab) -> Tensor      per-token NLL [N] float32
//   triad_(Tensor(a!) a, Tensor b, Tensor c, float s, bool nontemporal) -> ()   (benchmark baseline)
//   cpu_isa() -> str                                                           (diagnostics)
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "shardmix_kernels.h"
#include "xent_driver.h"

namespace shardmix {
namespace {

void weighted_sum_cpu_op(at::TensorList inputs, at::ArrayRef<double> weights, at::TensorList outs) {
  check_merge(inputs, weights, outs, c10::DeviceType::CPU);
  merge_alias_safe(inputs, outs, [&](at::TensorList targets) {
    const int K = static_cast<int>(inputs.size()), M = static_cast<int>(targets.size());
    std::vector<const void*> in_ptrs(K);
    std::vector<void*> out_ptrs(M);
    std::vector<int32_t> in_dt(K), out_dt(M);
    for (int k = 0; k < K; ++k) {
      in_ptrs[k] = inputs[k].const_data_ptr();
      in_dt[k] = merge_dtype_code(inputs[k], "inputs");
    }
    for (int m = 0; m < M; ++m) {
      out_ptrs[m] = targets[m].data_ptr();
      out_dt[m] = merge_dtype_code(targets[m], "outs");
    }
    const std::vector<float> w(weights.begin(), weights.end());
    weighted_sum_cpu(in_ptrs.data(), in_dt.data(), K, out_ptrs.data(), out_dt.data(), M, w.data(), inputs[0].numel(),
                     at::get_num_threads());
  });
}

at::Tensor linear_xent_cpu_op(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const at::Tensor& targets, int64_t ignore_index, int64_t chunk_tokens,
                              int64_t chunk_vocab) {
  check_xent(hidden, weight, bias, targets, chunk_tokens, chunk_vocab, c10::DeviceType::CPU);
  const int threads = at::get_num_threads();
  return linear_xent_driver(
      hidden, weight, bias, targets, ignore_index, chunk_tokens, chunk_vocab,
      [threads](const float* tile, int64_t rows, int64_t cols, int64_t ld, const int64_t* tg, int64_t col0, float* mx,
                float* sm, float* tl) { lse_tile_update_cpu(tile, rows, cols, ld, tg, col0, mx, sm, tl, threads); },
      lse_finalize_cpu);
}

void triad_cpu_op(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, double s, bool nontemporal) {
  for (const auto* t : {&a, &b, &c}) {
    SM_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
             "triad_ needs contiguous float32 CPU tensors");
    SM_CHECK(t->numel() == a.numel(), "triad_ arguments must have the same number of elements");
  }
  triad_cpu(a.data_ptr<float>(), b.const_data_ptr<float>(), c.const_data_ptr<float>(), static_cast<float>(s),
            a.numel(), at::get_num_threads(), nontemporal);
}

std::string cpu_isa_op() { return cpu_isa(); }

}  // namespace
}  // namespace shardmix

TORCH_LIBRARY(shardmix, m) {
  m.def("weighted_sum_(Tensor[] inputs, float[] weights, Tensor(a!)[] outs) -> ()");
  m.def(
      "linear_xent(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, int ignore_index, int chunk_tokens, "
      "int chunk_vocab) -> Tensor");
  m.def("triad_(Tensor(a!) a, Tensor b, Tensor c, float s, bool nontemporal) -> ()");
  m.def("cpu_isa() -> str", &shardmix::cpu_isa_op);
}

TORCH_LIBRARY_IMPL(shardmix, CPU, m) {
  m.impl("weighted_sum_", &shardmix::weighted_sum_cpu_op);
  m.impl("linear_xent", &shardmix::linear_xent_cpu_op);
  m.impl("triad_", &shardmix::triad_cpu_op);
}
