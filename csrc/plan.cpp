#include "plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>

#include "arg_checks.h"
#include "checks.h"
#include "quant.h"

namespace hpsgd {

CallScalars check_scalars(const PlanRequest& q) {
  const char* op = q.op;
  HPSGD_CHECK_ARG(std::isfinite(q.lr), op, ": lr is ", q.lr, "; expected a finite number");
  HPSGD_CHECK_ARG(std::isfinite(q.momentum) && q.momentum >= 0.0, op, ": momentum is ",
                  q.momentum, "; expected a finite number >= 0");
  HPSGD_CHECK_ARG(q.divisor >= 1, op, ": divisor is ", q.divisor,
                  "; expected an integer >= 1 (the number of ranks the SUM all-reduce adds)");
  HPSGD_CHECK_ARG(q.momenta.has_value() || (q.momentum == 0.0 && !q.nesterov), op,
                  ": momentum=", q.momentum, ", nesterov=", q.nesterov,
                  " needs momentum_buffers; expected momentum_buffers to be given");
  return scalars_of(q);
}

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

  check_scalars(q);
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

  // An 8-bit wire (docs/round-protocol.md, "8-bit wires"): out's dtype says so.
  auto given = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  pl.quantized = q.quantizable && given(q.out) && is_code_dtype(q.out->scalar_type());
  std::optional<at::ScalarType> flat_dtype;
  auto take_flat = [&](const std::optional<at::Tensor>& f, const char* name, bool codes) -> void* {
    if (!given(f)) return nullptr;
    if (codes) {
      check_layout(op, *f, Name{name, -1}, *device);
      HPSGD_CHECK_TYPE(f->scalar_type() == q.out->scalar_type(), op, ": ", name, " has dtype ",
                       f->scalar_type(), " but out has ", q.out->scalar_type(),
                       "; expected the codes of one 8-bit wire");
    } else {
      check_tensor(op, *f, Name{name, -1}, *device);
    }
    HPSGD_CHECK_ARG(f->numel() >= total, op, ": ", name, " has ", f->numel(),
                    " elements; expected at least ", total, " (the total of ",
                    q.params_name, ")");
    if (!codes && pl.quantized) {
      HPSGD_CHECK_TYPE(f->scalar_type() == at::kFloat, op, ": ", name, " has dtype ",
                       f->scalar_type(), " with an 8-bit out; expected float32 (it holds what "
                       "the wire carried, dequantised)");
    } else if (!codes) {
      if (!flat_dtype) flat_dtype = f->scalar_type();
      HPSGD_CHECK_TYPE(f->scalar_type() == *flat_dtype, op, ": ", name, " has dtype ",
                       f->scalar_type(), " but another flat buffer of this call has ",
                       *flat_dtype, "; expected out, reduced and sent to share one dtype");
    }
    return f->data_ptr();
  };
  pl.out = take_flat(q.out, "out", pl.quantized);
  pl.reduced = take_flat(q.reduced, q.reduced_name, pl.quantized);
  pl.sent = take_flat(q.sent, "sent", false);
  pl.flat_dtype = pl.quantized ? q.out->scalar_type() : flat_dtype.value_or(at::kFloat);
  const int64_t nb = quant::num_blocks(total);
  auto take_scales = [&](const std::optional<at::Tensor>& s, const char* name, bool wanted,
                         const char* with) -> float* {
    if (!wanted) {
      if (pl.quantized)  // reduced_scales without a reduced round
        HPSGD_CHECK_ARG(!given(s), op, ": ", name, " is given but ", q.reduced_name,
                        " is None; expected ", name, " only with a reduced round");
      HPSGD_CHECK_ARG(!given(s), op, ": ", name, " is given but out has dtype ",
                      given(q.out) ? q.out->scalar_type() : at::kFloat,
                      "; expected ", name, " only with an 8-bit out (int8 or float8_e4m3fn)");
      return nullptr;
    }
    HPSGD_CHECK_ARG(given(s), op, ": ", name, " is None with an 8-bit ", with,
                    "; expected a float32 tensor of at least ", nb, " elements (one scale per ",
                    quant::kBlock, " elements)");
    check_layout(op, *s, Name{name, -1}, *device);
    HPSGD_CHECK_TYPE(s->scalar_type() == at::kFloat, op, ": ", name, " has dtype ",
                     s->scalar_type(), "; expected float32");
    HPSGD_CHECK_ARG(s->numel() >= nb, op, ": ", name, " has ", s->numel(),
                    " elements; expected at least ", nb, " (one scale per ", quant::kBlock,
                    " elements of ", total, ")");
    return s->data_ptr<float>();
  };
  pl.out_scales = take_scales(q.out_scales, "out_scales", pl.quantized, "out");
  pl.reduced_scales =
      take_scales(q.reduced_scales, "reduced_scales", pl.quantized && pl.reduced, q.reduced_name);
  pl.write_params = q.write_params;
  pl.has_momenta = has_momenta;
  pl.device = *device;
  pl.n = n;

  pl.numels.resize(n);
  pl.params.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    pl.numels[i] = q.params[i].numel();
    pl.params[i] = q.params[i].data_ptr();
  }
  if (q.anchors) {
    pl.anchors.resize(n);
    for (int64_t i = 0; i < n; ++i) pl.anchors[i] = (*q.anchors)[i].data_ptr();
  }
  if (has_momenta) {
    pl.momenta.resize(n);
    for (int64_t i = 0; i < n; ++i) pl.momenta[i] = (*q.momenta)[i].data_ptr();
  }

  pl.cfg.anchor = !pl.anchors.empty();
  pl.cfg.reduced = pl.reduced != nullptr;
  pl.cfg.sent = pl.sent != nullptr;
  pl.cfg.momentum = has_momenta ? kMomentum : kNoMomentum;  // nesterov: per call
  if (has_verdict) pl.verdict = q.verdict->data_ptr<float>();

  const int64_t pe = c10::elementSize(pl.param_dtype), ae = c10::elementSize(pl.anchor_dtype),
                fe = c10::elementSize(pl.flat_dtype), se = pl.quantized ? 4 : fe;
  std::vector<Range> ranges;
  ranges.reserve(3 * n + 4);
  for (int64_t i = 0; i < n; ++i) {
    add_range(ranges, pl.params[i], pl.numels[i], pe, pl.write_params, item(q.params_name, i));
    if (pl.cfg.anchor)
      add_range(ranges, pl.anchors[i], pl.numels[i], ae, pl.write_anchors(), item("anchors", i));
    if (has_momenta)
      add_range(ranges, pl.momenta[i], pl.numels[i], ae, pl.write_anchors(),
                item("momentum_buffers", i));
  }
  if (pl.out) add_range(ranges, pl.out, total, fe, true, Name{"out", -1});
  if (pl.reduced) add_range(ranges, pl.reduced, total, fe, false, Name{q.reduced_name, -1});
  if (pl.sent) add_range(ranges, pl.sent, total, se, true, Name{"sent", -1});
  if (pl.out_scales) add_range(ranges, pl.out_scales, nb, 4, true, Name{"out_scales", -1});
  if (pl.reduced_scales)
    add_range(ranges, pl.reduced_scales, nb, 4, false, Name{"reduced_scales", -1});
  // Read by every thread while the others write: it must not alias an output.
  if (pl.verdict) add_range(ranges, pl.verdict, 1, 4, false, Name{"verdict", -1});
  check_no_overlap(op, ranges);
  return pl;
}

// ---------------------------------------------------------------------------
// The plan cache (see [plan cache] in plan.h).
namespace {

// Everything a Plan depends on, as words. Flat buffers first: the hook's
// double-buffered calls differ there, so a mismatch is found early. Returns
// false for a call it cannot describe (an undefined, non-strided or
// storage-less tensor): that call is never cached and make_plan reports it.
bool push_tensor(std::vector<int64_t>& s, const at::Tensor& t) {
  if (!t.defined() || t.layout() != at::kStrided) return false;
  const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  if (!impl->has_storage() || impl->has_symbolic_sizes_strides()) return false;
  const at::Device d = impl->device();
  const auto sizes = impl->sizes();
  const auto strides = impl->strides();
  const size_t dim = sizes.size();
  // One resize, then plain stores: this runs for every tensor of every call.
  const size_t at = s.size();
  s.resize(at + 3 + 2 * dim);
  int64_t* w = s.data() + at;
  w[0] = reinterpret_cast<intptr_t>(impl->data());
  w[1] = (static_cast<int64_t>(impl->dtype().toScalarType()) << 32) |
         (static_cast<int64_t>(d.type()) << 16) | static_cast<uint16_t>(d.index());
  w[2] = static_cast<int64_t>(dim);
  for (size_t k = 0; k < dim; ++k) {
    w[3 + k] = sizes[k];
    w[3 + dim + k] = strides[k];
  }
  return true;
}

bool push_optional(std::vector<int64_t>& s, const std::optional<at::Tensor>& t) {
  const bool present = t.has_value() && t->defined();
  s.push_back(present);
  return !present || push_tensor(s, *t);
}

bool signature(const PlanRequest& q, std::vector<int64_t>& s) {
  s.clear();
  s.push_back(reinterpret_cast<intptr_t>(q.op));
  s.push_back(reinterpret_cast<intptr_t>(q.params_name));
  s.push_back(reinterpret_cast<intptr_t>(q.reduced_name));
  s.push_back((q.write_params ? 1 : 0) | (q.anchors ? 2 : 0) | (q.momenta ? 4 : 0));
  if (!push_optional(s, q.out) || !push_optional(s, q.reduced) || !push_optional(s, q.sent) ||
      !push_optional(s, q.verdict) || !push_optional(s, q.out_scales) ||
      !push_optional(s, q.reduced_scales))
    return false;
  const int64_t n = static_cast<int64_t>(q.params.size());
  s.push_back(n);
  s.push_back(q.anchors ? static_cast<int64_t>(q.anchors->size()) : -1);
  s.push_back(q.momenta ? static_cast<int64_t>(q.momenta->size()) : -1);
  if (n == 0) return false;  // nothing to cache: make_plan is cheap
  for (const at::Tensor& t : q.params)
    if (!push_tensor(s, t)) return false;
  if (q.anchors)
    for (const at::Tensor& t : *q.anchors)
      if (!push_tensor(s, t)) return false;
  if (q.momenta)
    for (const at::Tensor& t : *q.momenta)
      if (!push_tensor(s, t)) return false;
  return true;
}

struct Entry {
  std::vector<int64_t> sig;
  std::shared_ptr<const Plan> plan;
};

// Most recent first. The engine uses two buffer sets per group (its flats
// alternate); an eviction frees device metadata (cudaFree waits for the device),
// so there is room for many groups before one would happen on a hot path.
constexpr size_t kCacheEntries = 64;

struct Cache {
  std::mutex mu;
  std::vector<Entry> entries;
  bool enabled = true;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: no teardown-order hazards
  return *c;
}

}  // namespace

std::shared_ptr<const Plan> cached_plan(const PlanRequest& q, Prepare prepare) {
  thread_local std::vector<int64_t> sig;
  Cache& c = cache();
  bool cacheable;
  {
    cacheable = signature(q, sig);
    std::lock_guard<std::mutex> lock(c.mu);
    cacheable = cacheable && c.enabled;
    if (cacheable) {
      for (size_t i = 0; i < c.entries.size(); ++i) {
        Entry& e = c.entries[i];
        if (e.sig.size() != sig.size() ||
            std::memcmp(e.sig.data(), sig.data(), sig.size() * sizeof(int64_t)) != 0)
          continue;
        if (i != 0) std::rotate(c.entries.begin(), c.entries.begin() + i, c.entries.begin() + i + 1);
        std::shared_ptr<const Plan> hit = c.entries.front().plan;
        // Same signature, same tensor checks passed: only the scalars are new.
        check_scalars(q);
        return hit;
      }
    }
  }
  auto pl = std::make_shared<Plan>(make_plan(q));  // throws on bad input: nothing cached
  if (!pl->empty() && prepare) prepare(*pl);
  if (cacheable && !pl->empty()) {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.entries.size() >= kCacheEntries) {
      // Evict the least recent Plan no captured CUDA graph refers to.
      for (size_t i = c.entries.size(); i-- > 0;)
        if (!c.entries[i].plan->permanent) {
          c.entries.erase(c.entries.begin() + i);
          break;
        }
    }
    c.entries.insert(c.entries.begin(), Entry{sig, pl});
  }
  return pl;
}

bool set_plan_cache_enabled(bool enabled) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  const bool old = c.enabled;
  c.enabled = enabled;
  return old;
}

void clear_plan_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.entries.erase(std::remove_if(c.entries.begin(), c.entries.end(),
                                 [](const Entry& e) { return !e.plan->permanent; }),
                  c.entries.end());
}

}  // namespace hpsgd
