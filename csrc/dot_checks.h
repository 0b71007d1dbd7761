// Argument checks of the multi-dot binding (dot_ops.cpp, dot_ops_cuda.cpp): messages name the
// argument, what was found and what to do, as checks.h does for the other ops.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "shardmix_kernels.h"

namespace shardmix {

// K >= 1 inputs and g on one device of `device_type`, contiguous, as many elements each as g; g
// float32. Returns the inputs' DType codes.
inline std::vector<int32_t> check_dot(at::TensorList inputs, const at::Tensor& g, c10::DeviceType device_type) {
  TORCH_CHECK(!inputs.empty(), "shardmix: multi_dot needs at least one input tensor");
  TORCH_CHECK(g.device().type() == device_type, "shardmix: g is on ", g.device(), "; this kernel runs on ", device_type,
              " tensors (use impl='auto' or move the tensors)");
  TORCH_CHECK(g.scalar_type() == at::kFloat, "shardmix: g has dtype ", g.scalar_type(),
              "; multi_dot takes a float32 g: pass g.float()");
  TORCH_CHECK(g.is_contiguous(), "shardmix: g is not contiguous: pass .contiguous()");
  std::vector<int32_t> dts;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& x = inputs[i];
    const std::string name = "inputs[" + std::to_string(i) + "]";
    TORCH_CHECK(x.device() == g.device(), "shardmix: ", name, " is on ", x.device(), " but must be on ", g.device(),
                " like g: move it with .to(", g.device(), ")");
    TORCH_CHECK(x.is_contiguous(), "shardmix: ", name, " is not contiguous: pass .contiguous()");
    TORCH_CHECK(x.numel() == g.numel(), "shardmix: ", name, " has ", x.numel(), " elements but g has ", g.numel());
    switch (x.scalar_type()) {
      case at::kFloat: dts.push_back(kFloat32); break;
      case at::kBFloat16: dts.push_back(kBFloat16); break;
      case at::kHalf: dts.push_back(kFloat16); break;
      default: TORCH_CHECK(false, "shardmix: ", name, " has dtype ", x.scalar_type(), "; supported: float32, bfloat16, float16");
    }
  }
  return dts;
}

}  // namespace shardmix
