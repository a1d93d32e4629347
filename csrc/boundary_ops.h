// The five hpsgd ops as thin front ends of one Plan: each says which streams it
// reads and writes, and the device's runner does the single pass. Included by
// each device's registration file with its own runner. Plans come from the
// plan cache (see [plan cache] in plan.h): `Prep` runs once per cached Plan,
// `Run` on every call.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <type_traits>

#include "checks.h"
#include "plan.h"

namespace hpsgd {

using Runner = void (*)(const Plan&, const CallScalars&);

// NOTE: [kernel variants] Which streams a kernel reads and writes is fixed at
// compile time, so a kernel keeps no pointer, load or branch of a stream it
// does not touch (fewer registers on CUDA, branch-free loops on CPU). Only
// these combinations exist, one per op (round_step: per reduced/sent/momentum):
//                 anchor reduced sent momentum out write_p
//   flatten         -      -      -     -       x     -
//   unflatten       -      x      -     -       -     x
//   delta_flatten   x      -      -     -       x     -
//   merge           x      x      -     -       -     x
//   round_step      x     0/1    0/1   0/1*     x     x     (* only with reduced)
// Anchors (and momenta) are written iff anchors and reduced are both present
// and the round is merged. Nesterov is a per-call flag of the momentum
// variants; whether the round is discarded is known only to the kernel (its
// verdict), so `Discard` is the kernel's own choice.
template <bool A, bool R, bool S, bool M, bool Out, bool WP, bool Discard = false>
struct KernelCfg {
  static constexpr bool has_anchor() { return A; }
  static constexpr bool has_reduced() { return R; }
  static constexpr bool has_sent() { return S; }
  static constexpr bool has_momentum() { return M && !Discard; }
  static constexpr bool has_out() { return Out; }
  static constexpr bool write_params() { return WP; }
  static constexpr bool write_anchors() { return A && R && !Discard; }
  static constexpr bool discard() { return Discard; }
  // apply_rule's interface (rule.h): only the momentum mode is read at run time.
  bool nesterov = false;
  C10_HOST_DEVICE int momentum_mode() const {
    return !has_momentum() ? kNoMomentum : (nesterov ? kNesterov : kMomentum);
  }
  using Discarding = KernelCfg<A, R, S, M, Out, WP, true>;
};

// Calls f(KernelCfg<...>{nesterov}) for the Plan's variant (see [kernel variants]).
template <class F>
void dispatch_variant(const Plan& pl, bool nesterov, F&& f) {
  const bool a = pl.cfg.anchor, r = pl.cfg.reduced, s = pl.cfg.sent;
  const bool m = pl.has_momenta && r, out = pl.out != nullptr, wp = pl.write_params;
  if (!a && !r && out && !wp) return f(KernelCfg<false, false, false, false, true, false>{});
  if (!a && r && !out && wp) return f(KernelCfg<false, true, false, false, false, true>{});
  if (a && !r && out && !wp) return f(KernelCfg<true, false, false, false, true, false>{});
  if (a && r && !s && !out && wp) return f(KernelCfg<true, true, false, false, false, true>{});
  HPSGD_CHECK(a && out && wp, "hpsgd: no kernel variant for this call (internal error)");
  if (!r) {
    if (s) return f(KernelCfg<true, false, true, false, true, true>{});
    return f(KernelCfg<true, false, false, false, true, true>{});
  }
  if (m) {
    if (s) return f(KernelCfg<true, true, true, true, true, true>{nesterov});
    return f(KernelCfg<true, true, false, true, true, true>{nesterov});
  }
  if (s) return f(KernelCfg<true, true, true, false, true, true>{});
  return f(KernelCfg<true, true, false, false, true, true>{});
}

// Calls g(T{}) with the float type of `t`.
template <class G>
void dispatch_float(at::ScalarType t, G&& g) {
  switch (t) {
    case at::kFloat: return g(float{});
    case at::kBFloat16: return g(c10::BFloat16{});
    case at::kHalf: return g(c10::Half{});
    default: HPSGD_CHECK(false, "hpsgd: no kernel for dtype ", t);
  }
}

// Calls f(P{}, A{}) with the Plan's param and anchor element types.
template <class F>
void dispatch_param_anchor(const Plan& pl, F&& f) {
  dispatch_float(pl.param_dtype, [&](auto p) {
    using P = std::decay_t<decltype(p)>;
    if (pl.anchor_dtype == at::kFloat) f(p, float{}); else f(p, P{});
  });
}

// Calls f(P{}, A{}, F{}) with the Plan's param, anchor and flat element types.
template <class F>
void dispatch_dtypes(const Plan& pl, F&& f) {
  dispatch_param_anchor(pl, [&](auto p, auto a) {
    dispatch_float(pl.flat_dtype, [&](auto fl) { f(p, a, fl); });
  });
}

// Calls f(C{}) with an 8-bit Plan's code type (csrc/quant.h).
template <class F>
void dispatch_codes(const Plan& pl, F&& f) {
  if (pl.flat_dtype == at::kChar) return f(int8_t{});
  HPSGD_CHECK(pl.flat_dtype == at::kFloat8_e4m3fn, "hpsgd: no 8-bit codes of dtype ", pl.flat_dtype);
  f(c10::Float8_e4m3fn{});
}

// The dispatcher passes Python's None for a non-optional Tensor as an undefined
// tensor; a required argument must never silently become an absent stream.
inline const at::Tensor& required(const at::Tensor& t, const char* op, const char* name) {
  HPSGD_CHECK_TYPE(t.defined(), op, ": ", name, " is None; expected a tensor");
  return t;
}

template <Prepare Prep, Runner Run>
struct BoundaryOps {
  static void go(const PlanRequest& q) {
    const std::shared_ptr<const Plan> pl = cached_plan(q, Prep);
    Run(*pl, scalars_of(q));
  }

  static void flatten(at::TensorList tensors, const at::Tensor& out) {
    PlanRequest q{"hpsgd.flatten", tensors, "tensors"};
    q.out = required(out, q.op, "out");
    go(q);
  }

  static void unflatten(const at::Tensor& flat, at::TensorList tensors) {
    PlanRequest q{"hpsgd.unflatten", tensors, "tensors"};
    q.reduced = required(flat, q.op, "flat");
    q.reduced_name = "flat";
    q.write_params = true;
    go(q);
  }

  static void delta_flatten(at::TensorList params, at::TensorList anchors,
                            const at::Tensor& out) {
    PlanRequest q{"hpsgd.delta_flatten", params};
    q.anchors = anchors;
    q.out = required(out, q.op, "out");
    go(q);
  }

  static void merge(at::TensorList params, at::TensorList anchors,
                    const at::Tensor& reduced, double lr) {
    PlanRequest q{"hpsgd.merge", params};
    q.anchors = anchors;
    q.reduced = required(reduced, q.op, "reduced");
    q.write_params = true;
    q.lr = lr;
    go(q);
  }

  static void round_step(at::TensorList params, at::TensorList anchors,
                         const std::optional<at::Tensor>& reduced, const at::Tensor& out,
                         double lr, std::optional<at::TensorList> momentum_buffers,
                         double momentum, bool nesterov,
                         const std::optional<at::Tensor>& sent, int64_t divisor,
                         const std::optional<at::Tensor>& verdict,
                         const std::optional<at::Tensor>& out_scales,
                         const std::optional<at::Tensor>& reduced_scales) {
    PlanRequest q{"hpsgd.round_step", params};
    q.out_scales = out_scales;
    q.reduced_scales = reduced_scales;
    q.quantizable = true;
    q.anchors = anchors;
    q.momenta = momentum_buffers;
    q.reduced = reduced;
    q.out = required(out, q.op, "out");
    q.sent = sent;
    q.divisor = divisor;
    q.verdict = verdict;
    q.write_params = true;
    q.lr = lr;
    q.momentum = momentum;
    q.nesterov = nesterov;
    go(q);
  }

  static void register_all(torch::Library& m) {
    m.impl("flatten", &flatten);
    m.impl("unflatten", &unflatten);
    m.impl("delta_flatten", &delta_flatten);
    m.impl("merge", &merge);
    m.impl("round_step", &round_step);
  }
};

}  // namespace hpsgd
