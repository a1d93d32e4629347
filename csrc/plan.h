// A validated description of one hpsgd op call, shared by the CPU and CUDA
// kernels. Building a Plan checks every argument; a call that fails does so
// here, before any kernel has written anything.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "rule.h"

namespace hpsgd {

// What an op asks for, with the argument names its errors must use.
struct PlanRequest {
  const char* op;
  at::TensorList params;
  const char* params_name = "params";
  std::optional<at::TensorList> anchors;
  std::optional<at::TensorList> momenta;
  std::optional<at::Tensor> out;
  std::optional<at::Tensor> reduced;
  const char* reduced_name = "reduced";
  std::optional<at::Tensor> sent;
  // round_step only: the wire's pre-division (see rule.h) and the device-side
  // merge-or-discard verdict on `reduced` (1 float32 element; absent = merge).
  int64_t divisor = 1;
  std::optional<at::Tensor> verdict;
  bool write_params = false;
  double lr = 1.0;
  double momentum = 0.0;
  bool nesterov = false;
};

struct Plan {
  // List streams, one entry per tensor; anchors/momenta empty when absent.
  std::vector<at::Tensor> params, anchors, momenta;
  // Flat streams, undefined when absent. Segment i is [offsets[i], +numel).
  at::Tensor out, reduced, sent;
  // Undefined, or 1 float32 element on the call's device, read only by the
  // kernel: the host never learns whether the round was merged or discarded.
  at::Tensor verdict;
  std::vector<int64_t> offsets;
  int64_t total = 0;
  at::ScalarType param_dtype = at::kFloat, anchor_dtype = at::kFloat,
                 flat_dtype = at::kFloat;
  bool write_params = false;
  // Anchors (and momenta) change only when a reduction is merged.
  bool write_anchors() const { return !anchors.empty() && reduced.defined(); }
  RuntimeCfg cfg{};
  float lr = 1.f, mu = 0.f, divisor = 1.f;

  int64_t size() const { return static_cast<int64_t>(params.size()); }
  bool empty() const { return total == 0; }
};

Plan make_plan(const PlanRequest& req);

}  // namespace hpsgd
