// CUDA runner of hpsgd::quantized_shard_sum: one thread block per codec block
// (kBlock threads, one element each). Each thread sums its element over the
// sources in order, so the sum is the CPU's bit for bit; the block's absmax is a
// tree of absmax_join, which is order-free (max, NaN wins).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>
#include <vector>

#include "../checks.h"
#include "../quant_sum_ops.h"
#include "kernel_info.cuh"

namespace hpsgd {
namespace cuda {
namespace {

constexpr int kThreads = static_cast<int>(quant::kBlock);
constexpr int kWarps = kThreads / 32;
constexpr int kExtraThreads = 128;

template <typename C>
__global__ void __launch_bounds__(kThreads)
    shard_sum_kernel(const C* __restrict__ codes, const float* __restrict__ scales,
                     int64_t sources, int64_t numel, int64_t blocks, C* __restrict__ out,
                     float* __restrict__ out_scales) {
  __shared__ float warp_max[kWarps];
  const int64_t b = blockIdx.x;
  const int64_t i = b * quant::kBlock + threadIdx.x;
  const bool live = i < numel;
  float sum = 0.f;
  if (live)
    for (int64_t s = 0; s < sources; ++s)
      sum = quant::add_rn(sum, quant::decode(codes[s * numel + i], scales[s * blocks + b]));
  float m = quant::absmax_join(0.f, live ? sum : 0.f);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = quant::absmax_join(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  m = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) m = quant::absmax_join(m, warp_max[w]);
  const float scale = quant::scale_of<C>(m);
  if (threadIdx.x == 0) out_scales[b] = scale;
  if (live) out[i] = quant::encode<C>(sum, scale);
}

__global__ void extra_sum_kernel(const float* __restrict__ in, int64_t sources, int64_t extra,
                                 float* __restrict__ out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= extra) return;
  float acc = 0.f;
  for (int64_t s = 0; s < sources; ++s) acc = quant::add_rn(acc, in[s * extra + j]);
  out[j] = acc;
}

template <typename C>
void launch(const ShardSumCall& c, cudaStream_t stream) {
  shard_sum_kernel<C><<<static_cast<unsigned>(c.blocks), kThreads, 0, stream>>>(
      static_cast<const C*>(c.codes), c.scales, c.sources, c.numel, c.blocks,
      static_cast<C*>(c.out_codes), c.out_scales);
  HPSGD_LAUNCH_CHECK();
}

void quantized_shard_sum_cuda(const ShardSumCall& c) {
  c10::cuda::CUDAGuard guard(c.device);
  quantized_shard_sum_on(c, at::cuda::getCurrentCUDAStream(c.device.index()).stream());
}

}  // namespace

std::vector<KernelInfo> quant_sum_kernels() {
  return {kernel_info("quant_sum.shard_sum[int8]", shard_sum_kernel<int8_t>, kThreads),
          kernel_info("quant_sum.shard_sum[e4m3]", shard_sum_kernel<c10::Float8_e4m3fn>, kThreads),
          kernel_info("quant_sum.extra_sum", extra_sum_kernel, kExtraThreads)};
}

void quantized_shard_sum_on(const ShardSumCall& c, cudaStream_t stream) {
  if (c.blocks == 0) return;
  if (c.fp8) launch<c10::Float8_e4m3fn>(c, stream);
  else launch<int8_t>(c, stream);
}

void extra_sum_on(const float* in, int64_t sources, int64_t extra, float* out, cudaStream_t stream) {
  if (extra == 0) return;
  const auto grid = static_cast<unsigned>((extra + kExtraThreads - 1) / kExtraThreads);
  extra_sum_kernel<<<grid, kExtraThreads, 0, stream>>>(in, sources, extra, out);
  HPSGD_LAUNCH_CHECK();
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(hpsgd, CUDA, m) {
  QuantSumOps<&cuda::quantized_shard_sum_cuda>::register_all(m);
}

}  // namespace hpsgd
