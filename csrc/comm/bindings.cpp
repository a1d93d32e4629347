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
  // CommTimeoutError is both a TimeoutError and a CommError: `except CommError`
  // catches every communicator failure, `except TimeoutError` the deadlines.
  // Leaked on purpose: a static py::object would be released after the
  // interpreter is gone. The module's attributes hold references too.
  static PyObject* comm_error =
      py::exception<CommFailure>(m, "CommError", PyExc_RuntimeError).release().ptr();
  static PyObject* comm_timeout =
      py::exception<CommTimeout>(m, "CommTimeoutError",
                                 py::make_tuple(py::handle(comm_error),
                                                py::handle(PyExc_TimeoutError)))
          .release()
          .ptr();
  py::register_exception_translator([](std::exception_ptr p) {
    if (!p) return;
    try {
      std::rethrow_exception(p);
    } catch (const CommTimeout& e) {
      py::set_error(py::handle(comm_timeout), e.what());
    } catch (const CommFailure& e) {
      py::set_error(py::handle(comm_error), e.what());
    }
  });

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
      // The c10d transport's CUDA buffers wait on the host here (NOTE: [c10d on CUDA]).
      .def("synchronize_stream", &Work::synchronize_stream, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("valid_flag", &Work::valid_flag,
                             "CUDA: 1-element float32 tensor aliasing mapped host memory, 1 while "
                             "the communicator is healthy, 0 once it was aborted. CPU: None.")
      .def_property_readonly("seq", &Work::seq)
      .def_property_readonly("bytes", &Work::bytes)
      .def_property_readonly("issued_at", &Work::issued_at)
      .def_property_readonly("completed_at", &Work::completed_at)
      .def_property_readonly("device_seconds", &Work::device_seconds)
      .def("__repr__", [](const Work& w) { return "<hpsgd Work " + w.describe() + ">"; });

  py::class_<Transport, std::shared_ptr<Transport>>(m, "CommunicatorCore")
      .def(
          "all_reduce_async",
          [](Transport& t, const at::Tensor& flat, bool average) {
            py::gil_scoped_release nogil;
            return t.all_reduce(flat, average);
          },
          "flat"_a, "average"_a = true)
      .def(
          "quantized_all_reduce_async",
          [](Transport& t, const at::Tensor& codes, const at::Tensor& scales, int64_t extra) {
            py::gil_scoped_release nogil;
            return t.quantized_all_reduce(codes, scales, extra);
          },
          "codes"_a, "scales"_a, "extra"_a = 0)
      .def(
          "abort",
          [](Transport& t, const std::string& reason) {
            py::gil_scoped_release nogil;
            t.abort(reason);
          },
          "reason"_a)
      .def(
          "close",
          [](Transport& t) {
            py::gil_scoped_release nogil;
            t.close();
          })
      .def("check", &Transport::check_usable,
           "Raises the recorded error (CommTimeoutError or CommError), if any.")
      .def_property_readonly("error", &Transport::error)
      .def_property_readonly("closed", &Transport::closed)
      .def_property_readonly("in_flight", &Transport::in_flight)
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
        return make_transport<C10dTransport>(std::move(pg), timeout_s, std::move(link));
      },
      "process_group"_a, "timeout"_a, "link"_a = nullptr);

#ifdef HPSGD_WITH_NCCL
  m.def("nccl_unique_id", [] { return py::bytes(NcclTransport::unique_id()); });
  m.def(
      "nccl_communicator",
      [](const py::bytes& uid, int rank, int world, int device, double timeout_s,
         std::shared_ptr<LinkModel> link, int min_ctas, int max_ctas) -> std::shared_ptr<Transport> {
        std::string id = uid;
        py::gil_scoped_release nogil;
        return make_transport<NcclTransport>(id, rank, world, device, timeout_s, std::move(link),
                                             NcclOptions{min_ctas, max_ctas});
      },
      "unique_id"_a, "rank"_a, "world_size"_a, "device"_a, "timeout"_a, "link"_a = nullptr,
      "min_ctas"_a = 0, "max_ctas"_a = 0);
#endif
}

}  // namespace hpsgd
