// A validated description of one hpsgd op call, shared by the CPU and CUDA
// kernels. Building a Plan checks every argument; a call that fails does so
// here, before any kernel has written anything.
//
// NOTE: [plan cache] A Plan holds raw pointers, sizes and dtypes, never the
// tensors themselves, so a cached Plan keeps no user memory alive. Everything a
// Plan says is a function of the call's signature (data pointers, dtypes,
// sizes, strides, layouts, devices, which optional arguments are present, the
// op): two calls with equal signatures pass or fail the same tensor checks and
// get the same Plan. The per-call scalars (lr, momentum, nesterov, divisor)
// live apart in CallScalars and are checked on every call. PlanCache maps a
// signature to a shared, immutable Plan plus whatever the device's runner
// prepared for it once (CUDA: the per-tensor metadata in device memory), so a
// call with an unchanged set of buffers validates nothing and uploads nothing.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <memory>
#include <mutex>
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
  // 8-bit wires (out and reduced of dtype int8 or float8_e4m3fn): their block
  // scales (csrc/quant.h, NOTE: [8-bit codec]); `sent` is then float32.
  std::optional<at::Tensor> out_scales, reduced_scales;
  bool quantizable = false;  // round_step only
  bool write_params = false;
  double lr = 1.0;
  double momentum = 0.0;
  bool nesterov = false;
};

// The scalars of one call: not part of a Plan (see [plan cache]).
struct CallScalars {
  float lr = 1.f, mu = 0.f, divisor = 1.f;
  bool nesterov = false;
};

struct Plan {
  int64_t n = 0;  // tensors per list
  // List streams, one entry per tensor; anchors/momenta empty when absent.
  std::vector<void*> params, anchors, momenta;
  std::vector<int64_t> numels;
  // Flat streams, null when absent. Segment i is [offsets[i], +numels[i]).
  void *out = nullptr, *reduced = nullptr, *sent = nullptr;
  // Null, or 1 float32 element on the call's device, read only by the kernel:
  // the host never learns whether the round was merged or discarded.
  const float* verdict = nullptr;
  std::vector<int64_t> offsets;
  int64_t total = 0;
  at::Device device{at::kCPU};
  at::ScalarType param_dtype = at::kFloat, anchor_dtype = at::kFloat,
                 flat_dtype = at::kFloat;
  bool write_params = false;
  bool has_momenta = false;
  // 8-bit wire: out/reduced hold codes of flat_dtype, one float32 scale per
  // quant::kBlock elements in out_scales/reduced_scales; sent is float32.
  bool quantized = false;
  float* out_scales = nullptr;  // non-null iff quantized
  const float* reduced_scales = nullptr;
  // Anchors (and momenta) change only when a reduction is merged.
  bool write_anchors() const { return !anchors.empty() && reduced != nullptr; }
  // Which streams are present; the momentum mode is per call (CallScalars).
  RuntimeCfg cfg{};
  // Set once by the device's runner when the Plan enters the cache (or for an
  // uncached call), read-only afterwards.
  std::shared_ptr<const void> prepared;
  // Set by `prepare` when a CUDA graph being captured refers to `prepared`:
  // such a Plan is never evicted (the graph may be replayed at any time).
  bool permanent = false;

  int64_t size() const { return n; }
  bool empty() const { return total == 0; }
};

// Validates a call and describes it; throws (ValueError/TypeError) on bad input.
Plan make_plan(const PlanRequest& req);
// The scalar checks of make_plan alone (lr, momentum, divisor), for a cached Plan.
CallScalars check_scalars(const PlanRequest& req);
// The scalars of a call that passed check_scalars (through cached_plan).
inline CallScalars scalars_of(const PlanRequest& q) {
  return {static_cast<float>(q.lr), static_cast<float>(q.momentum),
          static_cast<float>(q.divisor), q.nesterov};
}

// A Plan for `req`: from the cache when an identical signature passed before
// (then only the scalars are checked), else built, prepared by `prepare` and
// cached. `prepare` runs once per cached Plan (see [plan cache]).
using Prepare = void (*)(Plan&);
std::shared_ptr<const Plan> cached_plan(const PlanRequest& req, Prepare prepare);

// Turn the cache off (tests and the benchmark compare both); returns the old setting.
bool set_plan_cache_enabled(bool enabled);
void clear_plan_cache();

}  // namespace hpsgd
