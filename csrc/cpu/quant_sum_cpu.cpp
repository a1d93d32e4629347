// CPU runner of hpsgd::quantized_shard_sum: blocks are independent, so they are
// split across threads; each block's sum is in source order whatever the split.
#include <ATen/Parallel.h>

#include "../quant_sum_ops.h"

namespace hpsgd {
namespace {

template <typename C>
void run(const ShardSumCall& c) {
  const auto* codes = static_cast<const C*>(c.codes);
  auto* out = static_cast<C*>(c.out_codes);
  // A few blocks per work item: a shard of one block stays on the calling thread.
  at::parallel_for(0, c.blocks, 16, [&](int64_t begin, int64_t end) {
    float sum[quant::kBlock];
    for (int64_t b = begin; b < end; ++b)
      quant::shard_sum_block(codes, c.scales, c.sources, c.numel, c.blocks, b, out, c.out_scales,
                             sum);
  });
}

}  // namespace

void quantized_shard_sum_cpu(const ShardSumCall& c) {
  if (c.fp8) run<c10::Float8_e4m3fn>(c);
  else run<int8_t>(c);
}

TORCH_LIBRARY_IMPL(hpsgd, CPU, m) { QuantSumOps<&quantized_shard_sum_cpu>::register_all(m); }

}  // namespace hpsgd
