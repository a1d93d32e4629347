#include "verdict_ops.h"

#include <vector>

#include "arg_checks.h"
#include "checks.h"

namespace hpsgd {
namespace {

Wire wire_of(at::ScalarType t) {  // after check_tensor: one of the three
  return t == at::kFloat ? Wire::kF32 : (t == at::kBFloat16 ? Wire::kBF16 : Wire::kF16);
}

void check_world(const char* op, int64_t world) {
  HPSGD_CHECK_ARG(world >= 1, op, ": world is ", world,
                  "; expected an int >= 1 (the number of ranks, one flag slot each)");
}

// `numel` data elements and `world` slots must fit in `flat` (world >= 1 checked).
void check_numel(const char* op, const at::Tensor& flat, const Name& flat_name, int64_t numel,
                 const Name& numel_name, int64_t world) {
  HPSGD_CHECK_ARG(numel >= 0, op, ": ", numel_name, " is ", numel, "; expected an int >= 0");
  HPSGD_CHECK_ARG(numel <= flat.numel() - world, op, ": ", flat_name, " has ", flat.numel(),
                  " elements but ", numel_name, " is ", numel, " and world ", world,
                  "; expected room for the data elements followed by one flag slot per rank");
}

// A float32 tensor of `expected` elements on `device` (info, valid).
void check_float_tensor(const char* op, const at::Tensor& t, const char* name, int64_t expected,
                        const at::Device& device) {
  HPSGD_CHECK_TYPE(t.scalar_type() == at::kFloat, op, ": ", name, " has dtype ", t.scalar_type(),
                   "; expected float32");
  check_tensor(op, t, Name{name, -1}, device);
  HPSGD_CHECK_ARG(t.numel() == expected, op, ": ", name, " has ", t.numel(),
                  " elements; expected exactly ", expected);
}

}  // namespace

OwnFlagCall check_own_flag(const at::Tensor& flat, int64_t numel, int64_t rank, int64_t world,
                           bool check) {
  const char* op = "hpsgd.own_flag";
  HPSGD_CHECK_TYPE(flat.defined(), op, ": flat is None; expected a tensor");
  check_tensor(op, flat, Name{"flat", -1}, flat.device());
  check_world(op, world);
  HPSGD_CHECK_ARG(rank >= 0 && rank < world, op, ": rank is ", rank, "; expected 0 <= rank < world (",
                  world, ")");
  check_numel(op, flat, Name{"flat", -1}, numel, Name{"numel", -1}, world);
  return {flat.data_ptr(), numel, rank, world, check, wire_of(flat.scalar_type()), flat.device()};
}

VerdictCall check_reduced_verdict(at::TensorList flats, at::IntArrayRef numels, int64_t world,
                                  const std::optional<at::Tensor>& valid, const at::Tensor& info) {
  const char* op = "hpsgd.reduced_verdict";
  HPSGD_CHECK_TYPE(info.defined(), op, ": info is None; expected a tensor");
  const at::Device device = info.device();
  check_world(op, world);
  check_float_tensor(op, info, "info", world + 1, device);
  const bool has_valid = valid.has_value() && valid->defined();
  if (has_valid) check_float_tensor(op, *valid, "valid", 1, device);
  HPSGD_CHECK_ARG(numels.size() == flats.size(), op, ": numels has ", numels.size(),
                  " entries but flats has ", flats.size(), "; expected one per flat");
  VerdictCall c{{}, world, info.data_ptr<float>(), has_valid ? valid->data_ptr<float>() : nullptr,
                device};
  std::vector<Range> ranges;
  ranges.reserve(flats.size() + 2);
  for (size_t i = 0; i < flats.size(); ++i) {
    const at::Tensor& f = flats[i];
    const Name name = item("flats", static_cast<int64_t>(i));
    check_tensor(op, f, name, device);
    check_numel(op, f, name, numels[i], item("numels", static_cast<int64_t>(i)), world);
    c.flats.push_back({f.data_ptr(), numels[i], wire_of(f.scalar_type())});
    add_range(ranges, f.data_ptr(), numels[i] + world, f.element_size(), false, name);
  }
  add_range(ranges, c.info, world + 1, 4, true, Name{"info", -1});
  if (c.valid) add_range(ranges, c.valid, 1, 4, false, Name{"valid", -1});
  check_no_overlap(op, ranges);
  return c;
}

}  // namespace hpsgd
