// When does a sync_every="auto" window end? docs/round-protocol.md, "Auto window"
// states the rule and why it has a measured minimum; this is its only
// implementation (the Engine drives it; hpsgd_ext.window re-exports it).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>

namespace hpsgd::engine {

struct WindowConfig {
  bool count_background_cpu = true;  // CPU transports take cores from the compute
  double budget = 0.02;               // a round's own cost, as a share of its window
  int64_t max_window = 128;
  int64_t probe_every = 16;           // every probe_every-th window ...
  int64_t probe_steps = 2;            // ... takes this many steps with nothing in flight
  double smoothing = 0.2;             // of the exponential averages
  int64_t history = 33;               // steps whose median is a step's seconds

  void validate() const;  // ValueError naming the field
};

// CPU seconds used so far by every thread of this process but the caller.
double background_cpu_seconds();

class AutoWindow {
 public:
  explicit AutoWindow(WindowConfig cfg);

  // At every local step's hook: does this window end here?
  bool should_end(double now, int64_t steps_in_window, bool reduced);
  // When the hook returns (after any boundary).
  void step_done(double now);
  // At the end of every boundary: its own seconds and the window's steps.
  void round_ended(double boundary_s, int64_t steps);
  // After synchronize() or a load: time outside the loop is no round's.
  void restart();

  const WindowConfig& config() const { return cfg_; }
  int64_t min_window() const { return min_window_; }
  void set_min_window(int64_t n);
  std::optional<double> step_seconds() const { return step_s_; }
  std::optional<double> cost_seconds() const { return cost_s_; }

 private:
  WindowConfig cfg_;
  std::deque<double> steps_s_;        // recent steps' seconds, hook to hook
  std::optional<double> step_s_;      // their median
  double idle_cpu_s_ = 0.0;           // background CPU of a step with nothing in flight
  std::optional<double> cost_s_;      // one round's own cost (averaged)
  int64_t min_window_ = 1;
  int64_t rounds_ = 0;
  int64_t probe_left_;                // the first window measures an idle step
  std::optional<double> mark_;        // end of the previous hook
  double cpu_mark_ = 0.0;             // background CPU then
  std::optional<double> round_cpu_;   // background CPU at the last boundary's end
  bool idle_ = false;                 // the step now running has nothing in flight
  bool idle_seen_ = false;
};

}  // namespace hpsgd::engine
