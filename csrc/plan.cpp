#include "plan.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "checks.h"

namespace hpsgd {
namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

std::string item(const char* name, int64_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

// One tensor's structural checks: dense, contiguous, float, on `device`.
void check_tensor(const char* op, const at::Tensor& t, const std::string& name,
                  const at::Device& device) {
  HPSGD_CHECK_ARG(t.defined(), op, ": ", name, " is undefined; expected a tensor");
  HPSGD_CHECK_ARG(t.layout() == at::kStrided, op, ": ", name,
                  " has layout ", t.layout(), "; expected a dense (strided) tensor");
  HPSGD_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", name,
                   " has dtype ", t.scalar_type(),
                   "; expected float32, bfloat16 or float16");
  HPSGD_CHECK_ARG(t.device() == device, op, ": ", name, " is on ", t.device(),
                  " but the other tensors are on ", device,
                  "; expected all tensors on one device");
  HPSGD_CHECK_ARG(t.is_contiguous(), op, ": ", name,
                  " is not contiguous; expected a contiguous tensor "
                  "(hpsgd ops read and write tensors in place, so a "
                  ".contiguous() copy would not be updated)");
}

struct Range {
  uintptr_t begin, end;
  bool written;
  std::string name;
};

void add_range(std::vector<Range>& ranges, const at::Tensor& t, int64_t numel,
               bool written, std::string name) {
  if (numel == 0) return;
  auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  ranges.push_back({begin, begin + numel * t.element_size(), written, std::move(name)});
}

// Every byte a call writes must belong to exactly one argument: otherwise the
// result would depend on the order the kernel happens to visit elements in.
// Sorted sweep, O(n log n): thousands of tensors stay cheap.
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

}  // namespace

Plan make_plan(const PlanRequest& q) {
  const char* op = q.op;
  Plan pl;
  const int64_t n = static_cast<int64_t>(q.params.size());

  // The device every tensor must share: the first list tensor, else a flat one.
  std::optional<at::Device> device;
  if (n > 0) device = q.params[0].device();
  for (const auto* flat : {&q.out, &q.reduced, &q.sent})
    if (!device && flat->has_value() && (*flat)->defined()) device = (*flat)->device();
  if (!device) return pl;  // nothing to read or write

  HPSGD_CHECK_ARG(std::isfinite(q.lr), op, ": lr is ", q.lr, "; expected a finite number");
  HPSGD_CHECK_ARG(std::isfinite(q.momentum) && q.momentum >= 0.0, op, ": momentum is ",
                  q.momentum, "; expected a finite number >= 0");
  HPSGD_CHECK_ARG(q.divisor >= 1, op, ": divisor is ", q.divisor,
                  "; expected an integer >= 1 (the number of ranks the SUM all-reduce adds)");
  const bool has_verdict = q.verdict.has_value() && q.verdict->defined();
  if (has_verdict) {
    const at::Tensor& v = *q.verdict;
    const bool has_reduced = q.reduced.has_value() && q.reduced->defined();
    HPSGD_CHECK_ARG(has_reduced, op, ": verdict is given but ", q.reduced_name,
                    " is None; expected verdict only with a reduced round to judge");
    HPSGD_CHECK_ARG(v.layout() == at::kStrided, op, ": verdict has layout ", v.layout(),
                    "; expected a dense (strided) tensor");
    HPSGD_CHECK_TYPE(v.scalar_type() == at::kFloat, op, ": verdict has dtype ",
                     v.scalar_type(), "; expected float32");
    HPSGD_CHECK_ARG(v.numel() == 1, op, ": verdict has ", v.numel(),
                    " elements; expected exactly 1");
    HPSGD_CHECK_ARG(v.device() == *device, op, ": verdict is on ", v.device(),
                    " but the other tensors are on ", *device,
                    "; expected the verdict on the parameters' device");
  }

  auto check_list_len = [&](const std::optional<at::TensorList>& l, const char* name) {
    if (l.has_value())
      HPSGD_CHECK_ARG(static_cast<int64_t>(l->size()) == n, op, ": ", name, " has ",
                      l->size(), " tensors but ", q.params_name, " has ", n,
                      "; expected one per parameter");
  };
  check_list_len(q.anchors, "anchors");
  check_list_len(q.momenta, "momentum_buffers");
  const bool has_momenta = q.momenta.has_value();
  HPSGD_CHECK_ARG(has_momenta || (q.momentum == 0.0 && !q.nesterov), op,
                  ": momentum=", q.momentum, ", nesterov=", q.nesterov,
                  " needs momentum_buffers; expected momentum_buffers to be given");
  HPSGD_CHECK_ARG(!has_momenta || q.anchors.has_value(), op,
                  ": momentum_buffers given without anchors");

  pl.offsets.resize(n);
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& p = q.params[i];
    check_tensor(op, p, item(q.params_name, i), *device);
    const at::ScalarType pt = p.scalar_type();
    if (i == 0) pl.param_dtype = pt;
    HPSGD_CHECK_TYPE(pt == pl.param_dtype, op, ": ", item(q.params_name, i), " has dtype ",
                     pt, " but ", item(q.params_name, 0), " has ", pl.param_dtype,
                     "; expected one dtype per call (group tensors by dtype)");
    if (q.anchors) {
      const at::Tensor& a = (*q.anchors)[i];
      check_tensor(op, a, item("anchors", i), *device);
      HPSGD_CHECK_ARG(a.sizes() == p.sizes(), op, ": anchors[", i, "] has shape ", a.sizes(),
                      " but ", item(q.params_name, i), " has shape ", p.sizes(),
                      "; expected the same shape");
      const at::ScalarType at_ = a.scalar_type();
      if (i == 0) pl.anchor_dtype = at_;
      HPSGD_CHECK_TYPE(at_ == pl.anchor_dtype && (at_ == pt || at_ == at::kFloat), op,
                       ": anchors[", i, "] has dtype ", at_, " with ",
                       item(q.params_name, i), " of dtype ", pt,
                       "; expected one anchor dtype per call, equal to the "
                       "parameters' dtype or float32");
      if (has_momenta) {
        const at::Tensor& m = (*q.momenta)[i];
        check_tensor(op, m, item("momentum_buffers", i), *device);
        HPSGD_CHECK_ARG(m.sizes() == a.sizes(), op, ": momentum_buffers[", i,
                        "] has shape ", m.sizes(), " but anchors[", i, "] has shape ",
                        a.sizes(), "; expected the same shape");
        HPSGD_CHECK_TYPE(m.scalar_type() == at_, op, ": momentum_buffers[", i,
                         "] has dtype ", m.scalar_type(), " but anchors[", i,
                         "] has ", at_, "; expected the anchors' dtype");
      }
    }
    pl.offsets[i] = total;
    total += p.numel();
  }
  pl.total = total;
  if (!q.anchors) pl.anchor_dtype = pl.param_dtype;

  std::optional<at::ScalarType> flat_dtype;
  auto take_flat = [&](const std::optional<at::Tensor>& f, const char* name) -> at::Tensor {
    if (!f.has_value() || !f->defined()) return {};
    check_tensor(op, *f, name, *device);
    HPSGD_CHECK_ARG(f->numel() >= total, op, ": ", name, " has ", f->numel(),
                    " elements; expected at least ", total, " (the total of ",
                    q.params_name, ")");
    if (!flat_dtype) flat_dtype = f->scalar_type();
    HPSGD_CHECK_TYPE(f->scalar_type() == *flat_dtype, op, ": ", name, " has dtype ",
                     f->scalar_type(), " but another flat buffer of this call has ",
                     *flat_dtype, "; expected out, reduced and sent to share one dtype");
    return *f;
  };
  pl.out = take_flat(q.out, "out");
  pl.reduced = take_flat(q.reduced, q.reduced_name);
  pl.sent = take_flat(q.sent, "sent");
  pl.flat_dtype = flat_dtype.value_or(at::kFloat);
  pl.write_params = q.write_params;

  pl.params.assign(q.params.begin(), q.params.end());
  if (q.anchors) pl.anchors.assign(q.anchors->begin(), q.anchors->end());
  if (has_momenta) pl.momenta.assign(q.momenta->begin(), q.momenta->end());

  pl.cfg.anchor = !pl.anchors.empty();
  pl.cfg.reduced = pl.reduced.defined();
  pl.cfg.sent = pl.sent.defined();
  pl.cfg.momentum = !has_momenta ? kNoMomentum : (q.nesterov ? kNesterov : kMomentum);
  pl.lr = static_cast<float>(q.lr);
  pl.mu = static_cast<float>(q.momentum);
  pl.divisor = static_cast<float>(q.divisor);
  if (has_verdict) pl.verdict = *q.verdict;

  std::vector<Range> ranges;
  ranges.reserve(3 * n + 4);
  for (int64_t i = 0; i < n; ++i) {
    add_range(ranges, pl.params[i], pl.params[i].numel(), pl.write_params,
              item(q.params_name, i));
    if (pl.cfg.anchor)
      add_range(ranges, pl.anchors[i], pl.anchors[i].numel(), pl.write_anchors(),
                item("anchors", i));
    if (has_momenta)
      add_range(ranges, pl.momenta[i], pl.momenta[i].numel(), pl.write_anchors(),
                item("momentum_buffers", i));
  }
  if (pl.out.defined()) add_range(ranges, pl.out, total, true, "out");
  if (pl.reduced.defined()) add_range(ranges, pl.reduced, total, false, q.reduced_name);
  if (pl.sent.defined()) add_range(ranges, pl.sent, total, true, "sent");
  // Read by every thread while the others write: it must not alias an output.
  if (pl.verdict.defined()) add_range(ranges, pl.verdict, 1, false, "verdict");
  check_no_overlap(op, ranges);
  return pl;
}

}  // namespace hpsgd
