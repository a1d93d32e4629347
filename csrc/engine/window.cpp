#include "window.h"

#include <time.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"

namespace hpsgd::engine {
namespace {

double clock_seconds(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// statistics.median: the middle value, or the mean of the two middle ones.
double median(const std::deque<double>& xs) {
  std::vector<double> v(xs.begin(), xs.end());
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

}  // namespace

double background_cpu_seconds() {
  return clock_seconds(CLOCK_PROCESS_CPUTIME_ID) - clock_seconds(CLOCK_THREAD_CPUTIME_ID);
}

void WindowConfig::validate() const {
  HPSGD_CHECK_ARG(std::isfinite(budget) && budget > 0.0, "AutoWindow: budget is ", budget,
                  "; expected a finite number > 0");
  HPSGD_CHECK_ARG(max_window >= 1, "AutoWindow: max_window is ", max_window, "; expected >= 1");
  HPSGD_CHECK_ARG(probe_every >= 1, "AutoWindow: probe_every is ", probe_every, "; expected >= 1");
  HPSGD_CHECK_ARG(probe_steps >= 0, "AutoWindow: probe_steps is ", probe_steps, "; expected >= 0");
  HPSGD_CHECK_ARG(smoothing > 0.0 && smoothing <= 1.0, "AutoWindow: smoothing is ", smoothing,
                  "; expected 0 < smoothing <= 1");
  HPSGD_CHECK_ARG(history >= 1, "AutoWindow: history is ", history, "; expected >= 1");
}

AutoWindow::AutoWindow(WindowConfig cfg) : cfg_(cfg), probe_left_(cfg.probe_steps) {
  cfg_.validate();
}

void AutoWindow::set_min_window(int64_t n) {
  HPSGD_CHECK_ARG(n >= 1, "AutoWindow: min_window is ", n, "; expected >= 1");
  min_window_ = n;
}

bool AutoWindow::should_end(double now, int64_t steps_in_window, bool reduced) {
  if (mark_) {
    steps_s_.push_back(now - *mark_);
    if (static_cast<int64_t>(steps_s_.size()) > cfg_.history) steps_s_.pop_front();
    if (idle_ && cfg_.count_background_cpu) {
      const double used = background_cpu_seconds() - cpu_mark_;
      idle_cpu_s_ = idle_seen_ ? idle_cpu_s_ + cfg_.smoothing * (used - idle_cpu_s_) : used;
      idle_seen_ = true;
    }
  }
  if (!reduced) return false;
  idle_ = true;
  if (probe_left_ > 0) {
    probe_left_ -= 1;
    return false;
  }
  return steps_in_window >= min_window_;
}

void AutoWindow::step_done(double now) {
  mark_ = now;
  if (idle_ && cfg_.count_background_cpu) cpu_mark_ = background_cpu_seconds();
}

void AutoWindow::round_ended(double boundary_s, int64_t steps) {
  const double cpu = cfg_.count_background_cpu ? background_cpu_seconds() : 0.0;
  if (!steps_s_.empty() && round_cpu_) {
    step_s_ = median(steps_s_);
    const double cost =
        boundary_s + std::max(0.0, cpu - *round_cpu_ - static_cast<double>(steps) * idle_cpu_s_);
    cost_s_ = cost_s_ ? *cost_s_ + cfg_.smoothing * (cost - *cost_s_) : cost;
    int64_t want = 1;
    if (*step_s_ > 0) {
      // (1 - 1e-9): a cost of exactly k budgets is k steps, whatever the float rounding
      const double w = std::ceil(*cost_s_ / (cfg_.budget * *step_s_) * (1 - 1e-9));
      want = w >= static_cast<double>(cfg_.max_window) ? cfg_.max_window : static_cast<int64_t>(w);
    }
    min_window_ = std::max<int64_t>(1, std::min(cfg_.max_window, want));
  }
  round_cpu_ = cpu;
  idle_ = false;
  rounds_ += 1;
  if (rounds_ % cfg_.probe_every == 0) probe_left_ = cfg_.probe_steps;
}

void AutoWindow::restart() {
  mark_.reset();
  round_cpu_.reset();
  idle_ = false;
}

}  // namespace hpsgd::engine
