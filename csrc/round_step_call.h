// hpsgd::round_step as a C++ caller reaches it: through the dispatcher, so the
// CPU or CUDA kernel runs by device (the round engine, the host-cost probe).
// One typed handle, so the schema in ops.cpp is spelled out once more, here.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace hpsgd {

using RoundStepFn = void(at::TensorList params, at::TensorList anchors,
                         const std::optional<at::Tensor>& reduced, const at::Tensor& out,
                         double lr, std::optional<at::TensorList> momentum_buffers,
                         double momentum, bool nesterov, const std::optional<at::Tensor>& sent,
                         int64_t divisor, const std::optional<at::Tensor>& verdict,
                         const std::optional<at::Tensor>& out_scales,
                         const std::optional<at::Tensor>& reduced_scales);

inline const c10::TypedOperatorHandle<RoundStepFn>& round_step_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("hpsgd::round_step", "")
                             .typed<RoundStepFn>();
  return op;
}

}  // namespace hpsgd
