#include "work.h"

#include <cmath>
#include <limits>
#include <sstream>

#include "clock.h"
#include "transport.h"

namespace hpsgd::comm {

Work::Work(const std::shared_ptr<Transport>& transport, at::Tensor flat, int64_t seq,
           std::shared_ptr<Work> previous, double issued_at, double hold_until, double deadline,
           const char* what, int64_t bytes)
    : state_(transport->state()),
      transport_(transport),
      flat_(std::move(flat)),
      what_(what),
      seq_(seq),
      bytes_(bytes >= 0 ? bytes : static_cast<int64_t>(flat_.numel() * flat_.element_size())),
      issued_at_(issued_at),
      hold_until_(hold_until),
      deadline_(deadline),
      previous_(std::move(previous)),
      completed_at_(std::numeric_limits<double>::quiet_NaN()) {}

std::string Work::describe() const {
  std::ostringstream s;
  s << what_ << " #" << seq_ << " (" << bytes_ << " bytes, " << flat_.scalar_type() << ", "
    << state_->name << ") on rank " << state_->rank << " of " << state_->world;
  return s.str();
}

double Work::completed_at() const {
  std::lock_guard<std::mutex> lock(mu_);
  return completed_at_;
}

void Work::raise_own() const {
  throw_comm_error(static_cast<ErrorKind>(own_error_kind_), own_error_);
}

void Work::fail(ErrorKind kind, const std::string& why, bool count) {
  // Only the first error of this Work counts; a racing thread (the watchdog
  // and the user polling at once) reports the same one.
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (own_error_kind_ != 0) raise_own();
    own_error_kind_ = static_cast<int>(kind);
    own_error_ = why;
    if (count) state_->count_failed(kind == ErrorKind::kTimeout);
  }
  if (auto t = transport_.lock()) {
    t->fail(kind, why);
  } else {
    state_->record(kind, why);
  }
  throw_comm_error(kind, why);
}

bool Work::check_done(bool raise_if_overdue) {
  std::shared_ptr<Work> prev;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_.load(std::memory_order_relaxed)) return true;
    if (own_error_kind_ != 0) raise_own();
    prev = previous_;
  }
  if (state_->aborted()) {
    // Someone else failed first (or the user aborted): name this collective
    // and the recorded cause, with the recorded error's type.
    const ErrorKind kind = state_->error_kind();
    const std::string why =
        describe() + " cannot complete: " + state_->error().value_or("the communicator was aborted");
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (own_error_kind_ == 0) {
        own_error_kind_ = static_cast<int>(kind == ErrorKind::kNone ? ErrorKind::kFailure : kind);
        own_error_ = why;
      }
      raise_own();
    }
  }
  bool ready = false;
  try {
    ready = transport_done();
  } catch (const std::exception& e) {
    // Past the deadline, the transport's error is most likely its own timeout
    // (a c10d group's deadline matches ours and starts a little later): report
    // the missed deadline, whichever of the two noticed it first.
    if (now_s() > deadline_)
      fail(ErrorKind::kTimeout,
           describe() + " did not complete within its deadline of " +
               std::to_string(state_->timeout_s) + " s (the transport reported: " + e.what() +
               "); the communicator was aborted",
           true);
    fail(ErrorKind::kFailure, describe() + " failed: " + e.what() + "; the communicator was aborted",
         true);
  }
  if (ready && prev) {
    // Completion is reported in issue order.
    ready = prev->check_done(false);
    if (ready) {
      std::lock_guard<std::mutex> lock(mu_);
      previous_.reset();
    }
  }
  const double now = now_s();  // after the predecessor: completion times stay ordered
  if (ready && now < hold_until_) ready = false;  // the emulated link still holds it
  if (!ready) {
    if (raise_if_overdue && now > deadline_)
      fail(ErrorKind::kTimeout,
           describe() + " did not complete within its deadline of " +
               std::to_string(state_->timeout_s) +
               " s (a peer rank may have died, hung or not issued it); the communicator was aborted",
           true);
    return false;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!done_.load(std::memory_order_relaxed)) {
    completed_at_ = now;
    done_.store(true, std::memory_order_release);
    state_->count_completed();
  }
  return true;
}

bool Work::is_completed() { return check_done(true); }

void Work::expire_if_overdue(double now, double grace) {
  if (done() || now <= deadline_ + grace) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (own_error_kind_ != 0) raise_own();
  }
  fail(ErrorKind::kTimeout,
       describe() + " did not complete within its deadline of " + std::to_string(state_->timeout_s) +
           " s (a peer rank may have died, hung or not issued it); the communicator was aborted",
       true);
}

void Work::wait(std::optional<double> timeout_s) {
  if (check_done(true)) return;
  const double start = now_s();
  const double limit = timeout_s.value_or(state_->timeout_s);
  const double deadline = start + limit;
  for (;;) {
    bool ok = false;
    try {
      ok = check_done(true);
    } catch (...) {
      state_->count_wait(now_s() - start);
      throw;
    }
    if (ok) break;
    const double now = now_s();
    if (now >= deadline) {
      state_->count_wait(now - start);
      fail(ErrorKind::kTimeout,
           describe() + ": wait timed out after " + std::to_string(limit) +
               " s (a peer rank may have died, hung or not issued it); the communicator was aborted",
           true);
    }
    // Sleep no longer than the emulated hold or the deadline requires; short
    // slices also notice an abort from another thread (or the watchdog) soon.
    double slice = std::min(deadline - now, 0.05);
    if (hold_until_ > now) slice = std::min(slice, hold_until_ - now);
    block_for(std::max(slice, 0.0));
  }
  state_->count_wait(now_s() - start);
}

}  // namespace hpsgd::comm
