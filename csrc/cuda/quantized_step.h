// The CUDA runner of round_step on an 8-bit wire (csrc/cuda/quantized_step_cuda.cu),
// which boundary_cuda.cu's runner hands a quantized Plan to.
#pragma once

#include "../plan.h"
#include "multi_tensor_apply.cuh"

namespace hpsgd {
namespace cuda {

// `layout`: the Plan's tensors as the multi-tensor kernels see them.
void prepare_quantized(Plan& pl, const MultiTensorLayout& layout);
void run_quantized(const Plan& pl, const CallScalars& sc);

}  // namespace cuda
}  // namespace hpsgd
