// The five hpsgd ops as thin front ends of one Plan: each says which streams it
// reads and writes, and the device's runner does the single pass. Included by
// each device's registration file with its own runner.
#pragma once

#include <torch/library.h>

#include "checks.h"
#include "plan.h"

namespace hpsgd {

using Runner = void (*)(const Plan&);

// The dispatcher passes Python's None for a non-optional Tensor as an undefined
// tensor; a required argument must never silently become an absent stream.
inline const at::Tensor& required(const at::Tensor& t, const char* op, const char* name) {
  HPSGD_CHECK_TYPE(t.defined(), op, ": ", name, " is None; expected a tensor");
  return t;
}

template <Runner Run>
struct BoundaryOps {
  static void flatten(at::TensorList tensors, const at::Tensor& out) {
    PlanRequest q{"hpsgd.flatten", tensors, "tensors"};
    q.out = required(out, q.op, "out");
    Run(make_plan(q));
  }

  static void unflatten(const at::Tensor& flat, at::TensorList tensors) {
    PlanRequest q{"hpsgd.unflatten", tensors, "tensors"};
    q.reduced = required(flat, q.op, "flat");
    q.reduced_name = "flat";
    q.write_params = true;
    Run(make_plan(q));
  }

  static void delta_flatten(at::TensorList params, at::TensorList anchors,
                            const at::Tensor& out) {
    PlanRequest q{"hpsgd.delta_flatten", params};
    q.anchors = anchors;
    q.out = required(out, q.op, "out");
    Run(make_plan(q));
  }

  static void merge(at::TensorList params, at::TensorList anchors,
                    const at::Tensor& reduced, double lr) {
    PlanRequest q{"hpsgd.merge", params};
    q.anchors = anchors;
    q.reduced = required(reduced, q.op, "reduced");
    q.write_params = true;
    q.lr = lr;
    Run(make_plan(q));
  }

  static void round_step(at::TensorList params, at::TensorList anchors,
                         const std::optional<at::Tensor>& reduced, const at::Tensor& out,
                         double lr, std::optional<at::TensorList> momentum_buffers,
                         double momentum, bool nesterov,
                         const std::optional<at::Tensor>& sent, int64_t divisor,
                         const std::optional<at::Tensor>& verdict) {
    PlanRequest q{"hpsgd.round_step", params};
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
    Run(make_plan(q));
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
