#include "quant_sum_ops.h"

#include <vector>

#include "arg_checks.h"
#include "checks.h"

namespace hpsgd {
namespace {

void check_dense(const char* op, const at::Tensor& t, const char* name, const at::Device& device) {
  check_layout(op, t, Name{name, -1}, device);
  HPSGD_CHECK_ARG(t.dim() == 1, op, ": ", name, " has ", t.dim(),
                  " dimensions; expected a 1-D tensor");
}

}  // namespace

ShardSumCall check_quantized_shard_sum(const at::Tensor& codes, const at::Tensor& scales,
                                       int64_t sources, const at::Tensor& out_codes,
                                       const at::Tensor& out_scales) {
  const char* op = "hpsgd.quantized_shard_sum";
  HPSGD_CHECK_ARG(codes.defined(), op, ": codes is undefined; expected a tensor");
  const at::Device device = codes.device();
  check_dense(op, codes, "codes", device);
  check_dense(op, scales, "scales", device);
  check_dense(op, out_codes, "out_codes", device);
  check_dense(op, out_scales, "out_scales", device);
  HPSGD_CHECK_TYPE(is_code_dtype(codes.scalar_type()), op, ": codes has dtype ",
                   codes.scalar_type(), "; expected int8 or float8_e4m3fn");
  HPSGD_CHECK_TYPE(out_codes.scalar_type() == codes.scalar_type(), op, ": out_codes has dtype ",
                   out_codes.scalar_type(), "; expected codes' dtype (", codes.scalar_type(), ")");
  HPSGD_CHECK_TYPE(scales.scalar_type() == at::kFloat, op, ": scales has dtype ",
                   scales.scalar_type(), "; expected float32");
  HPSGD_CHECK_TYPE(out_scales.scalar_type() == at::kFloat, op, ": out_scales has dtype ",
                   out_scales.scalar_type(), "; expected float32");
  HPSGD_CHECK_ARG(sources >= 1, op, ": sources is ", sources, "; expected an int >= 1");
  const int64_t numel = out_codes.numel(), blocks = quant::num_blocks(numel);
  HPSGD_CHECK_ARG(codes.numel() == sources * numel, op, ": codes has ", codes.numel(),
                  " elements; expected sources * out_codes.numel() = ", sources * numel);
  HPSGD_CHECK_ARG(out_scales.numel() == blocks, op, ": out_scales has ", out_scales.numel(),
                  " elements; expected one per block of ", quant::kBlock, " out_codes: ", blocks);
  HPSGD_CHECK_ARG(scales.numel() == sources * blocks, op, ": scales has ", scales.numel(),
                  " elements; expected sources * blocks = ", sources * blocks);
  std::vector<Range> ranges;
  add_range(ranges, codes.data_ptr(), codes.numel(), 1, false, Name{"codes", -1});
  add_range(ranges, scales.data_ptr(), scales.numel(), 4, false, Name{"scales", -1});
  add_range(ranges, out_codes.data_ptr(), numel, 1, true, Name{"out_codes", -1});
  add_range(ranges, out_scales.data_ptr(), blocks, 4, true, Name{"out_scales", -1});
  check_no_overlap(op, ranges);
  return {codes.data_ptr(), scales.data_ptr<float>(), sources, numel, blocks,
          out_codes.data_ptr(), out_scales.data_ptr<float>(),
          codes.scalar_type() == at::kFloat8_e4m3fn, device};
}

}  // namespace hpsgd
