// The Python module hpsgd_ext._C: build facts, the communicator and the round engine bindings.
// The ops themselves are registered with the dispatcher (TORCH_LIBRARY) when
// this library loads and are reached through torch.ops.hpsgd.
#include <torch/extension.h>

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
  hpsgd::bind_comm(m);
  hpsgd::bind_engine(m);
}
