// The KernelInfo (kernels.h) of one kernel, for preload_kernels(): written once
// for every CUDA file that contributes kernels.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "../checks.h"
#include "kernels.h"

namespace hpsgd {
namespace cuda {

// Loads the kernel's module now (cudaFuncGetAttributes; see preload_kernels)
// and asks the occupancy API how many blocks of `threads` fit on one SM.
template <class K>
KernelInfo kernel_info(std::string name, K* kernel, int threads) {
  cudaFuncAttributes attr{};
  HPSGD_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  int blocks = 0;
  HPSGD_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, 0));
  return {std::move(name), attr.numRegs, static_cast<int64_t>(attr.localSizeBytes),
          attr.maxThreadsPerBlock, blocks};
}

}  // namespace cuda
}  // namespace hpsgd
