// The owner's step of the 8-bit reduction, hpsgd::quantized_shard_sum
// (docs/round-protocol.md, "8-bit wires"): `sources` shards of codes and scales,
// one after the other in rank order, dequantised, summed in float32 from 0 in
// that order and re-quantised with the codec (csrc/quant.h). The checked front
// end both devices share, the per-block rule the CPU runner and the host side
// of the c10d transport share, and the registration each device's file does
// with its own runner (as verdict_ops.h does).
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "quant.h"

namespace hpsgd {

struct ShardSumCall {
  const void* codes;    // [sources * numel]
  const float* scales;  // [sources * blocks]
  int64_t sources, numel, blocks;
  void* out_codes;    // [numel]
  float* out_scales;  // [blocks]
  bool fp8;           // float8_e4m3fn codes, else int8
  at::Device device;
};

// Validate a call (ValueError/TypeError naming the argument) before anything is written.
ShardSumCall check_quantized_shard_sum(const at::Tensor& codes, const at::Tensor& scales,
                                       int64_t sources, const at::Tensor& out_codes,
                                       const at::Tensor& out_scales);

namespace quant {

// Block `b` of a shard sum: the float32 sum in source order, its absmax (NaN
// wins), then the codes. `sum` has room for kBlock floats.
template <typename C>
inline void shard_sum_block(const C* codes, const float* scales, int64_t sources, int64_t numel,
                            int64_t blocks, int64_t b, C* out_codes, float* out_scales,
                            float* sum) {
  const int64_t lo = b * kBlock, len = std::min(kBlock, numel - lo);
  for (int64_t i = 0; i < len; ++i) sum[i] = 0.f;
  float value[kBlock];
  for (int64_t s = 0; s < sources; ++s) {
    decode_block(codes + s * numel + lo, scales[s * blocks + b], value, len);
    for (int64_t i = 0; i < len; ++i) sum[i] = add_rn(sum[i], value[i]);
  }
  const float scale = scale_of<C>(absmax_block(sum, len));
  out_scales[b] = scale;
  encode_block(sum, scale, out_codes + lo, len);
}

}  // namespace quant

template <void (*Run)(const ShardSumCall&)>
struct QuantSumOps {
  static void quantized_shard_sum(const at::Tensor& codes, const at::Tensor& scales,
                                  int64_t sources, const at::Tensor& out_codes,
                                  const at::Tensor& out_scales) {
    Run(check_quantized_shard_sum(codes, scales, sources, out_codes, out_scales));
  }
  static void register_all(torch::Library& m) {
    m.impl("quantized_shard_sum", &quantized_shard_sum);
  }
};

// The CPU runner, for the c10d transport's host-side sum as well as the op.
void quantized_shard_sum_cpu(const ShardSumCall& c);

}  // namespace hpsgd

#ifdef HPSGD_WITH_CUDA
#include <cuda_runtime_api.h>

namespace hpsgd::cuda {
// The CUDA runner on `stream`, for the NCCL transport (which calls it on its
// comm stream) as well as the op (the current stream).
void quantized_shard_sum_on(const ShardSumCall& c, cudaStream_t stream);
// out[j] = in[0 * extra + j] + in[1 * extra + j] + ... (sources terms, in order
// from 0): the 8-bit reduction's extra slots.
void extra_sum_on(const float* in, int64_t sources, int64_t extra, float* out, cudaStream_t stream);
}  // namespace hpsgd::cuda
#endif
