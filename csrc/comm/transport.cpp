#include "transport.h"

#include <cmath>
#include <limits>

#include "../arg_checks.h"
#include "../checks.h"
#include "clock.h"

namespace hpsgd::comm {

// --- CommState ----------------------------------------------------------------

void throw_comm_error(ErrorKind kind, const std::string& message) {
  if (kind == ErrorKind::kTimeout) throw CommTimeout(message);
  throw CommFailure(message);
}

bool CommState::record(ErrorKind kind, const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  if (kind_ != ErrorKind::kNone) return false;
  kind_ = kind == ErrorKind::kNone ? ErrorKind::kFailure : kind;
  message_ = message;
  aborted_.store(true, std::memory_order_release);
  return true;
}

std::optional<std::string> CommState::error() const {
  if (!aborted()) return std::nullopt;
  std::lock_guard<std::mutex> lock(mu_);
  return message_;
}

ErrorKind CommState::error_kind() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kind_;
}

void CommState::raise(const std::string& prefix) const {
  ErrorKind kind;
  std::string message;
  {
    std::lock_guard<std::mutex> lock(mu_);
    kind = kind_;
    message = message_;
  }
  throw_comm_error(kind, prefix + message);
}

Counters CommState::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

void CommState::count_issued(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.issued += 1;
  counters_.bytes += bytes;
}

void CommState::count_completed() {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.completed += 1;
}

void CommState::count_failed(bool timeout) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.failed += 1;
  if (timeout) counters_.timeouts += 1;
}

void CommState::count_wait(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.wait_seconds += seconds;
}

// --- Watchdog (NOTE: [watchdog] in transport.h) --------------------------------

Watchdog::Watchdog(std::weak_ptr<Transport> transport) : ctl_(std::make_shared<Control>()) {
  thread_ = std::thread(&Watchdog::run, ctl_, transport);
  try {
    monitor_ = std::thread(&Watchdog::monitor, ctl_, std::move(transport));
  } catch (...) {
    stop();
    throw;
  }
}

Watchdog::~Watchdog() { stop(); }

void Watchdog::stop() {
  {
    std::lock_guard<std::mutex> lock(ctl_->mu);
    ctl_->stop = true;
  }
  ctl_->cv.notify_all();
  for (std::thread* t : {&thread_, &monitor_}) {
    if (!t->joinable()) continue;
    if (t->get_id() == std::this_thread::get_id()) {
      // A pass dropped the last reference to the transport: we are inside its
      // destructor on that thread. Joining ourselves would deadlock; the loop
      // sees `stop` right after and touches only `ctl` (its own copy).
      t->detach();
    } else {
      t->join();
    }
  }
}

void Watchdog::monitor(std::shared_ptr<Control> ctl, std::weak_ptr<Transport> weak) {
  double last = now_s();
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(ctl->mu);
      ctl->cv.wait_for(lock, std::chrono::duration<double>(kPeriod), [&] { return ctl->stop; });
      if (ctl->stop) return;
    }
    const double now = now_s();
    const bool punctual = now - last <= kGrace;
    last = now;
    std::shared_ptr<Transport> t = weak.lock();
    if (!t) return;
    try {
      t->expire_overdue(punctual);
    } catch (...) {
      // never let the thread take the process down
    }
  }  // may run ~Transport here (then `stop` is set and the thread detached)
}

void Watchdog::run(std::shared_ptr<Control> ctl, std::weak_ptr<Transport> weak) {
  double wake = now_s() + kPeriod;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(ctl->mu);
      const double delay = std::max(0.0, wake - now_s());
      ctl->cv.wait_for(lock, std::chrono::duration<double>(delay), [&] { return ctl->stop; });
      if (ctl->stop) return;
    }
    double next = std::numeric_limits<double>::infinity();
    {
      std::shared_ptr<Transport> t = weak.lock();
      if (!t) return;
      try {
        next = t->watchdog_tick();
      } catch (...) {
        // A tick never throws by design; never let the thread take the process down.
      }
    }  // may run ~Transport here (then `stop` is set and the thread detached)
    const double now = now_s();
    // Just past the nearest deadline, so the overdue check sees it overdue.
    wake = std::min(now + kPeriod, std::max(next + 1e-3, now));
  }
}

// --- Transport ----------------------------------------------------------------

Transport::Transport(std::string name, int rank, int world, double timeout_s,
                     std::shared_ptr<LinkModel> link)
    : link_(std::move(link)) {
  HPSGD_CHECK_ARG(world > 0 && rank >= 0 && rank < world, "Communicator: rank ", rank,
                  " of world size ", world, " is invalid");
  HPSGD_CHECK_ARG(timeout_s > 0.0 && std::isfinite(timeout_s), "Communicator: timeout is ",
                  timeout_s, " s; expected a positive duration");
  state_ = std::make_shared<CommState>(std::move(name), rank, world, timeout_s);
}

Transport::~Transport() { stop_watchdog(); }

void Transport::start_watchdog() {
  std::lock_guard<std::mutex> lock(watchdog_mu_);
  if (!watchdog_ && !closed_.load()) watchdog_ = std::make_unique<Watchdog>(weak_from_this());
}

void Transport::stop_watchdog() {
  std::unique_ptr<Watchdog> w;
  {
    std::lock_guard<std::mutex> lock(watchdog_mu_);
    w = std::move(watchdog_);
  }
  if (w) w->stop();
}

void Transport::check_usable() const {
  if (state_->aborted()) state_->raise();
}

std::shared_ptr<Work> Transport::all_reduce(const at::Tensor& flat, bool average) {
  check_usable();
  if (closed_.load()) throw CommFailure("all_reduce_async: the communicator is closed");
  HPSGD_CHECK_ARG(flat.defined(), "all_reduce_async: flat is undefined; expected a tensor");
  HPSGD_CHECK_TYPE(flat.scalar_type() == at::kFloat || flat.scalar_type() == at::kBFloat16 ||
                       flat.scalar_type() == at::kHalf,
                   "all_reduce_async: flat has dtype ", flat.scalar_type(),
                   "; expected float32, bfloat16 or float16");
  HPSGD_CHECK_ARG(flat.is_contiguous() && flat.layout() == at::kStrided,
                  "all_reduce_async: flat is not a contiguous dense tensor; expected one "
                  "(the reduction is written in place)");
  check_buffer(flat, "all_reduce_async: flat");
  return schedule("all_reduce", flat.numel() * flat.element_size(),
                  [&](int64_t seq, std::shared_ptr<Work> previous, double issued, double hold,
                      double deadline) {
                    return issue(flat, average, seq, std::move(previous), issued, hold, deadline);
                  });
}

std::shared_ptr<Work> Transport::quantized_all_reduce(const at::Tensor& codes,
                                                      const at::Tensor& scales, int64_t extra) {
  const char* op = "quantized_all_reduce_async";
  check_usable();
  if (closed_.load()) throw CommFailure(std::string(op) + ": the communicator is closed");
  HPSGD_CHECK_ARG(codes.defined(), op, ": codes is undefined; expected a tensor");
  HPSGD_CHECK_ARG(scales.defined(), op, ": scales is undefined; expected a tensor");
  HPSGD_CHECK_TYPE(is_code_dtype(codes.scalar_type()), op, ": codes has dtype ", codes.scalar_type(),
                   "; expected int8 or float8_e4m3fn (8-bit codes, csrc/quant.h)");
  HPSGD_CHECK_TYPE(scales.scalar_type() == at::kFloat, op, ": scales has dtype ",
                   scales.scalar_type(), "; expected float32");
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{codes, "codes"},
                                std::pair<const at::Tensor&, const char*>{scales, "scales"}})
    HPSGD_CHECK_ARG(t.dim() == 1 && t.is_contiguous() && t.layout() == at::kStrided, op, ": ",
                    name, " is not a contiguous dense 1-D tensor (", t.dim(),
                    " dimensions, strides ", t.strides(),
                    "); expected one (the reduction is written in place)");
  HPSGD_CHECK_ARG(extra >= 0, op, ": extra is ", extra, "; expected an int >= 0");
  const int64_t nb = quant::num_blocks(codes.numel());
  HPSGD_CHECK_ARG(scales.numel() == nb + extra, op, ": scales has ", scales.numel(),
                  " elements; expected one per block of ", quant::kBlock, " codes (", nb,
                  " for ", codes.numel(), " codes) plus extra (", extra, "): ", nb + extra);
  HPSGD_CHECK_ARG(scales.device() == codes.device(), op, ": scales is on ", scales.device(),
                  " but codes is on ", codes.device(), "; expected both on one device");
  check_buffer(codes, "quantized_all_reduce_async: codes");
  QuantizedPlan plan(codes, scales, extra, world());
  return schedule("quantized_all_reduce", plan.bytes_sent(rank()),
                  [&](int64_t seq, std::shared_ptr<Work> previous, double issued, double hold,
                      double deadline) {
                    return issue_quantized(plan, seq, std::move(previous), issued, hold, deadline);
                  });
}

template <class Issue>
std::shared_ptr<Work> Transport::schedule(const char* what, int64_t nbytes, Issue&& issue_fn) {
  std::string failure;
  ErrorKind kind = ErrorKind::kFailure;
  std::vector<std::shared_ptr<Work>> done;  // completed Works, released outside the locks
  {
    std::lock_guard<std::mutex> lock(issue_mu_);  // one issue order on every rank
    if (closed_.load()) throw CommFailure(std::string(what) + "_async: the communicator is closed");
    check_usable();
    const double issued = now_s();
    const double bytes = static_cast<double>(nbytes);
    const double hold = link_ ? link_->reserve(bytes, issued) : 0.0;
    // The deadline counts from when the collective can start on the link (after
    // the ones before it), not from its modelled finish: a transfer that the link
    // holds for longer than the timeout times out, as it would on a real network.
    const double start = link_ ? hold - link_->duration(bytes) : issued;
    const double deadline = std::max(issued, start) + timeout();
    const int64_t seq = next_seq_;
    std::shared_ptr<Work> previous;
    {
      std::lock_guard<std::mutex> in(inflight_mu_);
      prune_locked(done);
      if (!inflight_.empty()) previous = inflight_.back();
    }
    try {
      auto work = issue_fn(seq, std::move(previous), issued, hold, deadline);
      {
        std::lock_guard<std::mutex> in(inflight_mu_);
        inflight_.push_back(work);
      }
      next_seq_ += 1;
      state_->count_issued(nbytes);
      return work;
    } catch (const CommTimeout& e) {
      kind = ErrorKind::kTimeout;
      failure = std::string("issuing ") + what + " #" + std::to_string(seq) + " on rank " +
                std::to_string(rank()) + " timed out: " + e.what() + "; the communicator was aborted";
    } catch (const std::exception& e) {
      failure = std::string("issuing ") + what + " #" + std::to_string(seq) + " on rank " +
                std::to_string(rank()) + " failed: " + e.what() + "; the communicator was aborted";
    }
  }
  state_->count_failed(kind == ErrorKind::kTimeout);
  fail(kind, failure);  // outside the lock: aborting a transport may call back in
  state_->raise();
}

void Transport::abort(const std::string& why) {
  fail(ErrorKind::kFailure, "the communicator was aborted: " + why);
}

void Transport::fail(ErrorKind kind, const std::string& why) {
  state_->record(kind, why);
  // Abort once, whoever recorded the error (the watchdog, a waiter, the user).
  bool expected = false;
  if (!transport_aborted_.compare_exchange_strong(expected, true)) return;
  if (!closed_.load()) abort_transport();
  // Nothing in flight can complete now: release the buffers (a Work the user
  // still holds keeps its own).
  std::deque<std::shared_ptr<Work>> drop;
  {
    std::lock_guard<std::mutex> in(inflight_mu_);
    drop.swap(inflight_);
  }
}

void Transport::close() {
  bool expected = false;
  if (!closed_.compare_exchange_strong(expected, true)) return;
  stop_watchdog();
  {
    std::deque<std::shared_ptr<Work>> drop;
    {
      std::lock_guard<std::mutex> in(inflight_mu_);
      drop.swap(inflight_);
    }
  }
  close_transport();
}

void Transport::prune_locked(std::vector<std::shared_ptr<Work>>& out) {
  // Completion is in issue order: the done ones are a prefix. Their last
  // references are dropped by the caller once it released the lock (freeing a
  // tensor may need the GIL).
  while (!inflight_.empty() && inflight_.front()->done()) {
    out.push_back(std::move(inflight_.front()));
    inflight_.pop_front();
  }
}

size_t Transport::in_flight() const {
  std::lock_guard<std::mutex> in(inflight_mu_);
  return inflight_.size();
}

double Transport::watchdog_tick() {
  double nearest = std::numeric_limits<double>::infinity();
  if (state_->aborted() || closed_.load()) return nearest;
  try {
    poll_transport();
  } catch (const std::exception& e) {
    fail(ErrorKind::kFailure, std::string(e.what()) + " (rank " + std::to_string(rank()) +
                                  ", seen by the watchdog); the communicator was aborted");
    return nearest;
  }
  std::vector<std::shared_ptr<Work>> works, done;
  {
    std::lock_guard<std::mutex> in(inflight_mu_);
    prune_locked(done);
    works.assign(inflight_.begin(), inflight_.end());
  }
  for (const auto& w : works) {
    try {
      // Exactly what is_completed() checks: deadline, transport errors, order.
      if (!w->is_completed()) nearest = std::min(nearest, w->deadline());
    } catch (const std::exception&) {
      break;  // recorded by the Work, transport aborted
    }
  }
  return nearest;
}

void Transport::expire_overdue(bool punctual) {
  if (!punctual || state_->aborted() || closed_.load()) return;
  // A reference is taken only to an overdue Work: a pass that finds none never
  // holds the last reference to a Work (whose buffer may need the GIL to free).
  const double now = now_s();
  std::shared_ptr<Work> overdue;
  {
    std::lock_guard<std::mutex> in(inflight_mu_);
    for (const auto& w : inflight_)
      if (!w->done() && now > w->deadline() + Watchdog::kGrace) {
        overdue = w;
        break;
      }
  }
  if (!overdue) return;
  try {
    overdue->expire_if_overdue(now, Watchdog::kGrace);
  } catch (const std::exception&) {
    // recorded by the Work, transport aborted
  }
}

}  // namespace hpsgd::comm
