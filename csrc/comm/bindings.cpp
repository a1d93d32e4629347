// Python bindings of the communicator: hpsgd_ext._C.{CommunicatorCore, Work,
// LinkModel, CommError, CommTimeoutError}. hpsgd_ext/comm.py is the public face.
#include <pybind11/chrono.h>
#include <pybind11/stl.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/extension.h>

#include "clock.h"
#include "link_model.h"
#include "transport_c10d.h"
#include "transport_nccl.h"
#include "work.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace hpsgd {

using Seconds = std::chrono::duration<double>;

void bind_comm(py::module_& m) {
  using namespace comm;
  py::register_exception<CommTimeout>(m, "CommTimeoutError", PyExc_TimeoutError);
  py::register_exception<CommFailure>(m, "CommError", PyExc_RuntimeError);

  m.def("monotonic", &now_s, "The clock every comm timestamp uses (seconds).");

  py::class_<LinkModel, std::shared_ptr<LinkModel>>(m, "LinkModel")
      .def(py::init<double, double>(), "bandwidth"_a, "latency"_a = 0.0)
      .def_property_readonly("bandwidth", &LinkModel::bandwidth)
      .def_property_readonly("latency", &LinkModel::latency)
      .def("duration", &LinkModel::duration, "bytes"_a)
      .def("reserve", [](LinkModel& l, double bytes) { return l.reserve(bytes, now_s()); },
           "bytes"_a, "Book the link now; returns the modelled finish (monotonic seconds).");

  py::class_<Work, std::shared_ptr<Work>>(m, "Work")
      .def("is_completed", &Work::is_completed)
      .def(
          "wait",
          [](Work& w, std::optional<Seconds> timeout) {
            py::gil_scoped_release nogil;
            w.wait(timeout ? std::optional<double>(timeout->count()) : std::nullopt);
          },
          "timeout"_a = py::none())
      .def("synchronize_stream", &Work::synchronize_stream)
      .def_property_readonly("seq", &Work::seq)
      .def_property_readonly("bytes", &Work::bytes)
      .def_property_readonly("issued_at", &Work::issued_at)
      .def_property_readonly("completed_at", &Work::completed_at)
      .def_property_readonly("device_seconds", &Work::device_seconds)
      .def("__repr__", [](const Work& w) { return "<hpsgd Work " + w.describe() + ">"; });

  py::class_<Transport, std::shared_ptr<Transport>>(m, "CommunicatorCore")
      .def(
          "all_reduce_async",
          [](Transport& t, const at::Tensor& flat) {
            py::gil_scoped_release nogil;
            return t.all_reduce(flat);
          },
          "flat"_a)
      .def("abort", &Transport::abort, "reason"_a)
      .def_property_readonly("rank", &Transport::rank)
      .def_property_readonly("world_size", &Transport::world)
      .def_property_readonly("transport", &Transport::name)
      .def_property_readonly("timeout", &Transport::timeout)
      .def_property_readonly("aborted", &Transport::aborted)
      .def_property_readonly("abort_reason", &Transport::abort_reason)
      .def_property_readonly("link", &Transport::link)
      .def("counters", [](const Transport& t) {
        const Counters c = t.counters();
        return py::dict("issued"_a = c.issued, "completed"_a = c.completed, "failed"_a = c.failed,
                        "timeouts"_a = c.timeouts, "bytes"_a = c.bytes,
                        "wait_seconds"_a = c.wait_seconds);
      });

  m.def(
      "c10d_communicator",
      [](c10::intrusive_ptr<c10d::ProcessGroup> pg, double timeout_s,
         std::shared_ptr<LinkModel> link) -> std::shared_ptr<Transport> {
        return std::make_shared<C10dTransport>(std::move(pg), timeout_s, std::move(link));
      },
      "process_group"_a, "timeout"_a, "link"_a = nullptr);

#ifdef HPSGD_WITH_NCCL
  m.def("nccl_unique_id", [] { return py::bytes(NcclTransport::unique_id()); });
  m.def(
      "nccl_communicator",
      [](const py::bytes& uid, int rank, int world, int device, double timeout_s,
         std::shared_ptr<LinkModel> link) -> std::shared_ptr<Transport> {
        std::string id = uid;
        py::gil_scoped_release nogil;
        return std::make_shared<NcclTransport>(id, rank, world, device, timeout_s, std::move(link));
      },
      "unique_id"_a, "rank"_a, "world_size"_a, "device"_a, "timeout"_a, "link"_a = nullptr);
#endif
}

}  // namespace hpsgd
