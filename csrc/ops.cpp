// The hpsgd operator schemas, in one place. Implementations are registered per
// device (csrc/cpu, csrc/cuda); fake implementations live in hpsgd_ext/ops.py.
// Ops return nothing: outputs are the annotated (!) arguments, so functionalization
// and torch.compile see every mutation. The Python wrappers return `out`.
#include <torch/library.h>

TORCH_LIBRARY(hpsgd, m) {
  m.def("flatten(Tensor[] tensors, Tensor(a!) out) -> ()");
  m.def("unflatten(Tensor flat, Tensor(a!)[] tensors) -> ()");
  m.def("delta_flatten(Tensor[] params, Tensor[] anchors, Tensor(a!) out) -> ()");
  m.def("merge(Tensor(a!)[] params, Tensor(b!)[] anchors, Tensor reduced, float lr=1.0) -> ()");
  m.def(
      "round_step(Tensor(a!)[] params, Tensor(b!)[] anchors, Tensor? reduced, "
      "Tensor(c!) out, float lr=1.0, Tensor(d!)[]? momentum_buffers=None, "
      "float momentum=0.0, bool nesterov=False, Tensor(e!)? sent=None, int divisor=1, "
      "Tensor? verdict=None, Tensor(f!)? out_scales=None, Tensor? reduced_scales=None) -> ()");
  // The non-finite rule's device side (docs/round-protocol.md, "Verdict kernels").
  m.def("own_flag(Tensor(a!) flat, int numel, int rank, int world, bool check=True) -> ()");
  m.def(
      "reduced_verdict(Tensor[] flats, int[] numels, int world, Tensor? valid, "
      "Tensor(a!) info) -> ()");
  // The 8-bit reduction's owner step (docs/round-protocol.md, "8-bit wires").
  m.def(
      "quantized_shard_sum(Tensor codes, Tensor scales, int sources, Tensor(a!) out_codes, "
      "Tensor(b!) out_scales) -> ()");
}

// No op here has a derivative, and none is ever differentiated through: the
// hook calls them under no_grad, and outputs are only written arguments.
// Without a kernel of its own at the Autograd key an op would go through
// torch's boxed autograd fallback on every call, which, under no_grad, only
// boxes the arguments (for round_step, every tensor of every list) and
// redispatches; a fallthrough goes straight to the device's kernel, unboxed.
// What a caller observes is the same: no grad_fn, no version bump (as with
// the fallback), no error.
TORCH_LIBRARY_IMPL(hpsgd, Autograd, m) {
  for (const char* op : {"flatten", "unflatten", "delta_flatten", "merge", "round_step", "own_flag",
                         "reduced_verdict", "quantized_shard_sum"})
    m.impl(op, torch::CppFunction::makeFallthrough());
}
