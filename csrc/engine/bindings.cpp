// Python bindings of the round engine: hpsgd_ext._C.{Engine, AutoWindow,
// raise_control_error} (the verdict's ops are torch.ops.hpsgd.*).
// hpsgd_ext/hook.py (HPSGD) is the public face; hpsgd_ext/window.py re-exports
// AutoWindow. FloatingPointError keeps its Python type; the policy's warnings
// are handed over as strings (take_warnings) for Python to warn with.
#include <pybind11/stl.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/extension.h>

#include "engine.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace hpsgd {

namespace {

using engine::AutoWindow;
using engine::Counters;
using engine::Engine;
using engine::VerdictCounts;

py::object optional_float(const std::optional<double>& v) {
  return v ? py::object(py::float_(*v)) : py::object(py::none());
}

py::dict window_stats(const AutoWindow& w) {
  return py::dict("min_window"_a = w.min_window(), "step_seconds"_a = w.step_seconds().value_or(0.0),
                  "round_cost_seconds"_a = w.cost_seconds().value_or(0.0));
}

py::dict counters_dict(const Engine& e) {
  const Counters& c = e.counters();
  const VerdictCounts& v = e.verdicts();
  return py::dict("rounds"_a = c.rounds, "local_steps"_a = c.local_steps,
                  "skipped_steps"_a = c.skipped_steps, "exposed_seconds"_a = c.exposed_seconds,
                  "boundary_seconds"_a = c.boundary_seconds, "comm_seconds"_a = c.comm_seconds,
                  "bytes_reduced"_a = c.bytes_reduced, "catch_up_rounds"_a = c.catch_up_rounds,
                  "synchronizations"_a = c.synchronizations, "steps_in_window"_a = c.steps_in_window,
                  "skipped_rounds"_a = v.skipped_rounds,
                  "consecutive_bad_rounds"_a = v.consecutive_bad_rounds,
                  "last_round_discarded"_a = v.last_round_discarded);
}

template <typename T>
T get(const py::dict& d, const char* key, T fallback) {
  return d.contains(key) ? d[key].cast<T>() : fallback;
}

}  // namespace

void bind_engine(py::module_& m) {
  static PyObject* fpe = PyExc_FloatingPointError;
  py::register_exception_translator([](std::exception_ptr p) {
    if (!p) return;
    try {
      std::rethrow_exception(p);
    } catch (const engine::NonFiniteRounds& e) {
      py::set_error(py::handle(fpe), e.what());
    }
  });

  py::class_<AutoWindow>(m, "AutoWindow")
      .def(py::init([](bool count_background_cpu, double budget, int64_t max_window,
                       int64_t probe_every, int64_t probe_steps, double smoothing, int64_t history) {
             return AutoWindow(engine::WindowConfig{count_background_cpu, budget, max_window,
                                                    probe_every, probe_steps, smoothing, history});
           }),
           "count_background_cpu"_a, "budget"_a = 0.02, "max_window"_a = 128, "probe_every"_a = 16,
           "probe_steps"_a = 2, "smoothing"_a = 0.2, "history"_a = 33)
      .def("should_end", &AutoWindow::should_end, "now"_a, "steps_in_window"_a, "reduced"_a)
      .def("step_done", &AutoWindow::step_done, "now"_a)
      .def("round_ended", &AutoWindow::round_ended, "boundary_s"_a, "steps"_a)
      .def("restart", &AutoWindow::restart)
      .def("stats", &window_stats)
      .def_property("min_window", &AutoWindow::min_window, &AutoWindow::set_min_window)
      .def_property_readonly("step_s", [](const AutoWindow& w) { return optional_float(w.step_seconds()); })
      .def_property_readonly("cost_s", [](const AutoWindow& w) { return optional_float(w.cost_seconds()); })
      .def_property_readonly("budget", [](const AutoWindow& w) { return w.config().budget; })
      .def_property_readonly("max_window", [](const AutoWindow& w) { return w.config().max_window; })
      .def_property_readonly("probe_every", [](const AutoWindow& w) { return w.config().probe_every; })
      .def_property_readonly("probe_steps", [](const AutoWindow& w) { return w.config().probe_steps; })
      .def_property_readonly("count_background_cpu",
                             [](const AutoWindow& w) { return w.config().count_background_cpu; });

  py::class_<Engine>(m, "Engine")
      .def(py::init([](const std::vector<std::tuple<std::vector<at::Tensor>, at::ScalarType, double,
                                                     double, bool, int64_t>>& groups,
                       std::shared_ptr<comm::Transport> comm, py::object control, int64_t sync_every,
                       bool keep, bool check_finite, int64_t max_bad_rounds,
                       std::string comm_dtype_name, double timeout, int64_t fragments) {
             std::vector<engine::GroupSpec> specs;
             for (const auto& [live, dtype, lr, momentum, nesterov, fragment] : groups)
               specs.push_back({live, dtype, lr, momentum, nesterov, fragment});
             c10::intrusive_ptr<c10d::ProcessGroup> pg;
             if (!control.is_none()) pg = control.cast<c10::intrusive_ptr<c10d::ProcessGroup>>();
             engine::EngineOptions o;
             o.sync_every = sync_every;
             o.keep = keep;
             o.check_finite = check_finite;
             o.max_bad_rounds = max_bad_rounds;
             o.comm_dtype_name = std::move(comm_dtype_name);
             o.timeout_s = timeout;
             o.fragments = fragments;
             return std::make_unique<Engine>(std::move(specs), std::move(comm), std::move(pg), o);
           }),
           "groups"_a, "comm"_a, "control"_a, "sync_every"_a, "keep"_a, "check_finite"_a,
           "max_bad_rounds"_a, "comm_dtype_name"_a, "timeout"_a, "fragments"_a = 1)
      // step() stays under the GIL: it is the hot path and never blocks.
      .def("step", &Engine::step, "skipped"_a = false)
      .def("boundary", &Engine::boundary, py::call_guard<py::gil_scoped_release>())
      .def("synchronize", &Engine::synchronize, py::call_guard<py::gil_scoped_release>())
      .def("quiesce", &Engine::quiesce, py::call_guard<py::gil_scoped_release>())
      .def("close", &Engine::close, py::call_guard<py::gil_scoped_release>())
      .def("poll_verdicts", &Engine::poll_verdicts)
      .def("take_warnings", &Engine::take_warnings)
      .def("counters", &counters_dict)
      .def("window_stats",
           [](const Engine& e) { return e.window() ? py::object(window_stats(*e.window())) : py::none(); })
      .def("replace_live", &Engine::replace_live, "group"_a, "index"_a, "tensor"_a)
      .def("anchors", [](Engine& e, size_t g) { return e.groups().at(g).anchors; })
      .def("momenta", [](Engine& e, size_t g) { return e.groups().at(g).momenta; })
      .def("live", [](Engine& e, size_t g) { return e.groups().at(g).live; })
      .def("sent",
           [](Engine& e, size_t g) {
             const at::Tensor& s = e.groups().at(g).sent;
             return s.defined() ? std::optional<at::Tensor>(s) : std::nullopt;
           })
      .def("flat", [](Engine& e, size_t g, int i) { return e.groups().at(g).flats[i & 1]; })
      .def("scales",  // an 8-bit group's block scales and flag slots; None for the others
           [](Engine& e, size_t g, int i) {
             const at::Tensor& s = e.groups().at(g).scales[i & 1];
             return s.defined() ? std::optional<at::Tensor>(s) : std::nullopt;
           })
      .def("reduced", &Engine::reduced)
      .def("reduced_scales",
           [](const Engine& e) {
             std::vector<std::optional<at::Tensor>> out;
             for (const at::Tensor& s : e.reduced_scales())
               out.push_back(s.defined() ? std::optional<at::Tensor>(s) : std::nullopt);
             return out;
           })
      .def_property_readonly("pending_fragment", &Engine::pending_fragment)
      .def("restore",
           [](Engine& e, const py::dict& c, bool pending, bool in_sync) {
             Counters k;
             k.rounds = get<int64_t>(c, "rounds", 0);
             k.local_steps = get<int64_t>(c, "local_steps", 0);
             k.skipped_steps = get<int64_t>(c, "skipped_steps", 0);
             k.bytes_reduced = get<int64_t>(c, "bytes_reduced", 0);
             k.catch_up_rounds = get<int64_t>(c, "catch_up_rounds", 0);
             k.synchronizations = get<int64_t>(c, "synchronizations", 0);
             k.steps_in_window = get<int64_t>(c, "steps_in_window", 0);
             k.exposed_seconds = get<double>(c, "exposed_seconds", 0.0);
             k.boundary_seconds = get<double>(c, "boundary_seconds", 0.0);
             k.comm_seconds = get<double>(c, "comm_seconds", 0.0);
             VerdictCounts v;
             v.skipped_rounds = get<int64_t>(c, "skipped_rounds", 0);
             v.consecutive_bad_rounds = get<int64_t>(c, "consecutive_bad_rounds", 0);
             v.last_round_discarded = get<bool>(c, "last_round_discarded", false);
             e.restore(k, v, pending, in_sync);
           },
           "counters"_a, "pending"_a, "in_sync"_a)
      .def_property_readonly("pending", &Engine::pending)
      .def_property_readonly("in_sync", &Engine::in_sync)
      .def_property_readonly("rank", &Engine::rank)
      .def_property_readonly("world_size", &Engine::world)
      .def_property_readonly("groups", [](Engine& e) { return e.groups().size(); });

  m.def(
      "raise_control_error",
      [](const std::string& what, int rank, int world, double timeout, const std::string& cause) {
        engine::raise_control_error(what, rank, world, timeout, cause);
      },
      "what"_a, "rank"_a, "world_size"_a, "timeout"_a, "cause"_a,
      "Raises CommTimeoutError/CommError for a failed control collective (see engine.h).");
}

}  // namespace hpsgd
