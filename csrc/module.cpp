// The Python module hpsgd_ext._C: build facts, the communicator and the round engine bindings.
// The ops themselves are registered with the dispatcher (TORCH_LIBRARY) when
// this library loads and are reached through torch.ops.hpsgd.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include <chrono>

#include "plan.h"
#include "round_step_call.h"
#ifdef HPSGD_WITH_CUDA
#include "cuda/kernels.h"
#endif

namespace hpsgd {
void bind_comm(pybind11::module_& m);
void bind_engine(pybind11::module_& m);
}


PYBIND11_MODULE(_C, m) {
  m.doc() = "hpsgd_ext native library";
  m.def("built_with_cuda", [] {
#ifdef HPSGD_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("built_with_nccl", [] {
#ifdef HPSGD_WITH_NCCL
    return true;
#else
    return false;
#endif
  });
  m.def("preload_kernels", [] {
    // One dict per CUDA kernel (loaded now, see csrc/cuda/kernels.h); [] without CUDA.
    pybind11::list out;
#ifdef HPSGD_WITH_CUDA
    if (!at::hasCUDA()) return out;
    for (const auto& k : hpsgd::cuda::preload_kernels()) {
      pybind11::dict d;
      d["name"] = k.name;
      d["registers"] = k.registers;
      d["local_bytes"] = k.local_bytes;
      d["max_threads"] = k.max_threads;
      d["blocks_per_sm"] = k.blocks_per_sm;
      out.append(d);
    }
#endif
    return out;
  });
  // Tests and the benchmark compare cached and uncached calls (see [plan cache]).
  m.def("_set_plan_cache_enabled", &hpsgd::set_plan_cache_enabled, pybind11::arg("enabled"));
  m.def("_clear_plan_cache", &hpsgd::clear_plan_cache);
  // Host cost of round_step as a C++ caller (the round engine) pays it: the
  // dispatcher, the plan cache, the launch; microseconds per call over `iters`
  // calls. CPU calls also run the (tiny, for this purpose) kernel.
  m.def(
      "_time_round_step",
      [](std::vector<at::Tensor> params, std::vector<at::Tensor> anchors, at::Tensor reduced,
         at::Tensor out, std::optional<at::Tensor> sent, int64_t iters) {
        const auto& op = hpsgd::round_step_op();
        pybind11::gil_scoped_release no_gil;
        const std::optional<at::Tensor> red(reduced);
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < iters; ++i)
          op.call(params, anchors, red, out, 0.5, std::nullopt, 0.0, false, sent, 1, std::nullopt,
                  std::nullopt, std::nullopt);
        const auto t1 = std::chrono::steady_clock::now();
        return std::chrono::duration<double, std::micro>(t1 - t0).count() / iters;
      },
      pybind11::arg("params"), pybind11::arg("anchors"), pybind11::arg("reduced"),
      pybind11::arg("out"), pybind11::arg("sent"), pybind11::arg("iters"));
  hpsgd::bind_comm(m);
  hpsgd::bind_engine(m);
}
