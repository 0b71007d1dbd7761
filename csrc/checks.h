// Argument checks shared by the CPU (ops.cpp) and CUDA (ops_cuda.cpp) bindings. Each message
// names the argument, what was found and what to do about it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <optional>
#include <vector>

#include "shardmix_kernels.h"

#define SM_CHECK(cond, ...) TORCH_CHECK((cond), "shardmix: ", __VA_ARGS__)

#define SM_CHECK_DEVICE(t, name, dev)                                                                     \
  SM_CHECK((t).device() == (dev), name, " is on ", (t).device(), " but must be on ", (dev),               \
           " like the other arguments: move it with .to(", (dev), ")")

#define SM_CHECK_CONTIGUOUS(t, name)                                                                      \
  SM_CHECK((t).is_contiguous(), name, " is not contiguous (sizes ", (t).sizes(), ", strides ", (t).strides(), \
           "): pass .contiguous()")

namespace shardmix {

inline int32_t merge_dtype_code(const at::Tensor& t, const std::string& name) {
  switch (t.scalar_type()) {
    case at::kFloat: return kFloat32;
    case at::kBFloat16: return kBFloat16;
    case at::kHalf: return kFloat16;
    default: SM_CHECK(false, name, " has dtype ", t.scalar_type(), "; supported: float32, bfloat16, float16");
  }
  return kFloat32;
}

inline std::string indexed(const char* what, size_t i) { return std::string(what) + "[" + std::to_string(i) + "]"; }

// weighted_sum_: K inputs, M outputs, weights [M * K], all on `device_type`, one device, one shape.
inline void check_merge(at::TensorList inputs, at::ArrayRef<double> weights, at::TensorList outs,
                        c10::DeviceType device_type) {
  SM_CHECK(!inputs.empty(), "weighted_sum_ needs at least one input tensor");
  SM_CHECK(!outs.empty(), "weighted_sum_ needs at least one output tensor");
  SM_CHECK(weights.size() == inputs.size() * outs.size(), "weights has ", weights.size(),
           " values but M * K = ", outs.size(), " * ", inputs.size(), " (row-major [M, K])");
  const at::Tensor& first = inputs[0];
  SM_CHECK(first.device().type() == device_type, "inputs[0] is on ", first.device(), "; this kernel runs on ",
           device_type, " tensors (use impl='auto' or move the tensors)");
  auto check_one = [&](const at::Tensor& t, const std::string& name) {
    SM_CHECK_DEVICE(t, name, first.device());
    SM_CHECK_CONTIGUOUS(t, name);
    SM_CHECK(t.sizes() == first.sizes(), name, " has shape ", t.sizes(), " but inputs[0] has ", first.sizes());
    merge_dtype_code(t, name);
  };
  for (size_t i = 0; i < inputs.size(); ++i) check_one(inputs[i], indexed("inputs", i));
  for (size_t m = 0; m < outs.size(); ++m) check_one(outs[m], indexed("outs", m));
}

// linear_xent: hidden [N, d], weight [V, d], bias [V] or none, targets [N] int64; one device.
inline void check_xent(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const at::Tensor& targets, int64_t chunk_tokens, int64_t chunk_vocab,
                       c10::DeviceType device_type) {
  SM_CHECK(hidden.device().type() == device_type, "hidden is on ", hidden.device(), "; this kernel runs on ",
           device_type, " tensors (use impl='auto' or move the tensors)");
  SM_CHECK(hidden.dim() == 2 && weight.dim() == 2, "hidden must be [N, d] and weight [V, d]; got ", hidden.sizes(),
           " and ", weight.sizes());
  SM_CHECK(hidden.size(1) == weight.size(1), "hidden is [N, ", hidden.size(1), "] but weight is [V, ", weight.size(1),
           "]: d must match");
  SM_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0), "targets must be [N=", hidden.size(0), "], got ",
           targets.sizes());
  SM_CHECK(targets.scalar_type() == at::kLong, "targets must be int64, got ", targets.scalar_type(),
           ": pass targets.long()");
  SM_CHECK(chunk_tokens > 0 && chunk_vocab > 0, "chunk sizes must be positive, got ", chunk_tokens, " and ",
           chunk_vocab);
  merge_dtype_code(hidden, "hidden");
  merge_dtype_code(weight, "weight");
  SM_CHECK_CONTIGUOUS(hidden, "hidden");
  SM_CHECK_CONTIGUOUS(weight, "weight");
  SM_CHECK_CONTIGUOUS(targets, "targets");
  SM_CHECK_DEVICE(weight, "weight", hidden.device());
  SM_CHECK_DEVICE(targets, "targets", hidden.device());
  if (bias.has_value()) {
    SM_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must be [V=", weight.size(0), "], got ",
             bias->sizes());
    merge_dtype_code(*bias, "bias");
    SM_CHECK_CONTIGUOUS(*bias, "bias");
    SM_CHECK_DEVICE(*bias, "bias", hidden.device());
  }
}

// Run `merge(outs)` so that outputs may alias inputs. The kernels read every input element before
// writing the same element of up to kAliasSafeGroup outputs, so an output that IS an input is safe
// for M <= kAliasSafeGroup; an output that partly overlaps an input (shifted view), or is an input
// when M is larger, is computed into a temporary and copied back. Outputs must not overlap each other.
constexpr size_t kAliasSafeGroup = 4;

template <class Merge>
void merge_alias_safe(at::TensorList inputs, at::TensorList outs, Merge merge) {
  std::vector<at::Tensor> actual(outs.begin(), outs.end());
  std::vector<size_t> copy_back;
  for (size_t m = 0; m < outs.size(); ++m) {
    for (size_t j = m + 1; j < outs.size(); ++j)
      SM_CHECK(at::get_overlap_status(outs[m], outs[j]) == at::MemOverlapStatus::No, "outs[", m, "] and outs[", j,
               "] share memory: every output needs its own storage");
    for (const at::Tensor& x : inputs) {
      const auto status = at::get_overlap_status(outs[m], x);
      if (status == at::MemOverlapStatus::No) continue;
      if (status == at::MemOverlapStatus::Full && outs.size() <= kAliasSafeGroup) continue;
      actual[m] = at::empty_like(outs[m]);
      copy_back.push_back(m);
      break;
    }
  }
  merge(at::TensorList(actual));
  for (size_t m : copy_back) outs[m].copy_(actual[m]);
}

inline at::Tensor as_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

}  // namespace shardmix
