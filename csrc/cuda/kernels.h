// What the CUDA runner exposes beyond the ops: its kernels, loaded up front.
// Plain C++ (no CUDA headers), for module.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hpsgd {
namespace cuda {

struct KernelInfo {
  std::string name;     // variant and dtypes, e.g. "boundary[ar-mop] p=bf16 a=f32 f=bf16"
  int registers;        // per thread
  int64_t local_bytes;  // local memory per thread (spills, stack); 0 expected
  int max_threads;      // per block the kernel can launch with
  int blocks_per_sm;    // resident blocks of kThreads (occupancy API)
};

// Loads every kernel instantiation of the extension on the current device
// (cudaFuncGetAttributes on each), so that no first launch waits for the
// module to load behind a running collective under CUDA lazy loading.
std::vector<KernelInfo> preload_kernels();

// The verdict's kernels (csrc/cuda/verdict_cuda.cu), which preload_kernels includes.
std::vector<KernelInfo> verdict_kernels();
// The 8-bit reduction's kernels (csrc/cuda/quant_sum_cuda.cu), which the NCCL
// transport launches behind its own collectives: preloaded too.
std::vector<KernelInfo> quant_sum_kernels();
// The 8-bit round step's (csrc/cuda/quantized_step_cuda.cu), likewise.
std::vector<KernelInfo> quantized_kernels();

}  // namespace cuda
}  // namespace hpsgd
