// The device-independent part of the streaming cross-entropy: chunk over tokens, tile over the
// vocabulary, run the tile GEMM with torch (MKL/oneDNN on CPU, cuBLAS on CUDA) into ONE reused
// [token_chunk x vocab_chunk] buffer, and hand each tile to the fused online log-sum-exp kernel.
// Peak extra memory: the tile buffer + O(token_chunk) state + the [N] result.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <optional>

#include "checks.h"

namespace shardmix {

// update(tile_ptr, rows, cols, ld, targets_ptr, col0, run_max, run_sum, tgt) and
// finalize(run_max, run_sum, tgt, targets_ptr, rows, ignore_index, nll_ptr) are the kernels.
template <class Update, class Finalize>
at::Tensor linear_xent_driver(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const at::Tensor& targets, int64_t ignore_index, int64_t chunk_tokens,
                              int64_t chunk_vocab, Update update, Finalize finalize) {
  const int64_t N = hidden.size(0), V = weight.size(0);
  const auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor nll = at::empty({N}, fopts);
  if (N == 0) return nll;
  const int64_t tc = std::min(chunk_tokens, N), vc = std::min(chunk_vocab, V);
  at::Tensor buf = at::empty({tc * vc}, fopts);
  at::Tensor run_max = at::empty({tc}, fopts), run_sum = at::empty({tc}, fopts), tgt = at::empty({tc}, fopts);
  const int64_t* tptr = targets.data_ptr<int64_t>();
  for (int64_t n0 = 0; n0 < N; n0 += tc) {
    const int64_t nt = std::min(tc, N - n0);
    const at::Tensor h = as_float(hidden.narrow(0, n0, nt));
    run_max.fill_(-std::numeric_limits<float>::infinity());
    run_sum.zero_();
    tgt.zero_();
    for (int64_t v0 = 0; v0 < V; v0 += vc) {
      const int64_t nv = std::min(vc, V - v0);
      at::Tensor tile = buf.narrow(0, 0, nt * nv).view({nt, nv});
      const at::Tensor w = as_float(weight.narrow(0, v0, nv));
      if (bias.has_value()) at::addmm_out(tile, as_float(bias->narrow(0, v0, nv)), h, w.t());
      else at::mm_out(tile, h, w.t());
      update(tile.data_ptr<float>(), nt, nv, nv, tptr + n0, v0, run_max.data_ptr<float>(), run_sum.data_ptr<float>(),
             tgt.data_ptr<float>());
    }
    finalize(run_max.data_ptr<float>(), run_sum.data_ptr<float>(), tgt.data_ptr<float>(), tptr + n0, nt, ignore_index,
             nll.data_ptr<float>() + n0);
  }
  return nll;
}

}  // namespace shardmix
