// The hpsgd ops for C++ users: typed front ends of the dispatcher ops that
// csrc/ops.cpp declares (torch.ops.hpsgd.* in Python, hpsgd_ext/ops.py), with
// the same arguments and defaults. Each call goes through the dispatcher, so
// CPU and CUDA tensors reach their device's kernel. Results are written into
// the (annotated) output arguments; the flat layout is DESIGN.md section 4's:
// segments contiguous in the order of the tensor list, no padding, a longer
// flat buffer's tail untouched.
//
// The ops register when libhpsgd_ext loads (static initialisers); the
// hpsgd_ext::hpsgd_ext CMake target links it even where no symbol of it is
// named (--no-as-needed), so including this header and linking the target is
// all a program needs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>
#include <optional>

#include "round_step_call.h"  // csrc/'s, installed beside this header

namespace hpsgd::ops {

namespace detail {
template <class Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}
}  // namespace detail

// out[seg i] = tensors[i] (cast to out's dtype).
inline void flatten(at::TensorList tensors, const at::Tensor& out) {
  static const auto h = detail::op<void(at::TensorList, const at::Tensor&)>("hpsgd::flatten");
  h.call(tensors, out);
}

// tensors[i] = flat[seg i] (cast to each tensor's dtype).
inline void unflatten(const at::Tensor& flat, at::TensorList tensors) {
  static const auto h = detail::op<void(const at::Tensor&, at::TensorList)>("hpsgd::unflatten");
  h.call(flat, tensors);
}

// out[seg i] = params[i] - anchors[i].
inline void delta_flatten(at::TensorList params, at::TensorList anchors, const at::Tensor& out) {
  static const auto h =
      detail::op<void(at::TensorList, at::TensorList, const at::Tensor&)>("hpsgd::delta_flatten");
  h.call(params, anchors, out);
}

// anchors[i] += lr * reduced[seg i]; params[i] = anchors[i].
inline void merge(at::TensorList params, at::TensorList anchors, const at::Tensor& reduced,
                  double lr = 1.0) {
  static const auto h = detail::op<void(at::TensorList, at::TensorList, const at::Tensor&, double)>(
      "hpsgd::merge");
  h.call(params, anchors, reduced, lr);
}

// The fused round boundary (the rule is written out in csrc/rule.h, installed as
// hpsgd_ext/rule.h): d = p - a - divisor*sent; out = d / divisor; a += the outer
// step on `reduced` (none when it is nullopt: the first round); p = a ("reset",
// no `sent`) or p = a + d and sent = out ("keep"). With divisor = N the all-reduce
// that follows is a SUM over N ranks and yields the mean. `verdict` (1 float32
// element on the device, 0 or NaN = discard) lets the device refuse a bad round.
// An 8-bit `out` (int8 or float8_e4m3fn) takes `out_scales` (float32, one per 512
// elements) and reads `reduced` as codes with `reduced_scales`; `sent` is float32
// and holds what the codes carry (docs/round-protocol.md, "8-bit wires").
inline void round_step(at::TensorList params, at::TensorList anchors,
                       const std::optional<at::Tensor>& reduced, const at::Tensor& out,
                       double lr = 1.0,
                       std::optional<at::TensorList> momentum_buffers = std::nullopt,
                       double momentum = 0.0, bool nesterov = false,
                       const std::optional<at::Tensor>& sent = std::nullopt, int64_t divisor = 1,
                       const std::optional<at::Tensor>& verdict = std::nullopt,
                       const std::optional<at::Tensor>& out_scales = std::nullopt,
                       const std::optional<at::Tensor>& reduced_scales = std::nullopt) {
  hpsgd::round_step_op().call(params, anchors, reduced, out, lr, momentum_buffers, momentum,
                              nesterov, sent, divisor, verdict, out_scales, reduced_scales);
}

}  // namespace hpsgd::ops
