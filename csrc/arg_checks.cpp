#include "arg_checks.h"

#include <algorithm>

#include "checks.h"

namespace hpsgd {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

std::ostream& operator<<(std::ostream& os, const Name& n) {
  os << n.list;
  if (n.index >= 0) os << "[" << n.index << "]";
  return os;
}

bool is_code_dtype(at::ScalarType t) { return t == at::kChar || t == at::kFloat8_e4m3fn; }

void check_tensor(const char* op, const at::Tensor& t, const Name& name,
                  const at::Device& device) {
  check_layout(op, t, name, device);
  HPSGD_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", name,
                   " has dtype ", t.scalar_type(),
                   "; expected float32, bfloat16 or float16");
}

void check_layout(const char* op, const at::Tensor& t, const Name& name,
                  const at::Device& device) {
  HPSGD_CHECK_ARG(t.defined(), op, ": ", name, " is undefined; expected a tensor");
  HPSGD_CHECK_ARG(t.layout() == at::kStrided, op, ": ", name,
                  " has layout ", t.layout(), "; expected a dense (strided) tensor");
  HPSGD_CHECK_ARG(t.device() == device, op, ": ", name, " is on ", t.device(),
                  " but the other tensors are on ", device,
                  "; expected all tensors on one device");
  HPSGD_CHECK_ARG(t.is_contiguous(), op, ": ", name,
                  " is not contiguous; expected a contiguous tensor "
                  "(hpsgd ops read and write tensors in place, so a "
                  ".contiguous() copy would not be updated)");
}

void add_range(std::vector<Range>& ranges, const void* data, int64_t numel, int64_t elem,
               bool written, Name name) {
  if (numel == 0) return;
  auto begin = reinterpret_cast<uintptr_t>(data);
  ranges.push_back({begin, begin + numel * elem, written, name});
}

void check_no_overlap(const char* op, std::vector<Range>& ranges) {
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& x, const Range& y) { return x.begin < y.begin; });
  const Range* reach_any = nullptr;      // furthest-reaching range so far
  const Range* reach_written = nullptr;  // furthest-reaching written range
  for (const Range& r : ranges) {
    const Range* clash = nullptr;
    if (reach_written && r.begin < reach_written->end) clash = reach_written;
    else if (r.written && reach_any && r.begin < reach_any->end) clash = reach_any;
    HPSGD_CHECK_ARG(clash == nullptr, op, ": ", r.name, " overlaps ", clash->name,
                    " in memory, and one of them is written; expected outputs "
                    "that share no memory with any other argument");
    if (!reach_any || r.end > reach_any->end) reach_any = &r;
    if (r.written && (!reach_written || r.end > reach_written->end)) reach_written = &r;
  }
}

}  // namespace hpsgd
