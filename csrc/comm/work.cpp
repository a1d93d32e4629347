#include "work.h"

#include <cmath>
#include <limits>
#include <sstream>

#include "clock.h"
#include "transport.h"

namespace hpsgd::comm {

Work::Work(std::shared_ptr<Transport> transport, at::Tensor flat, int64_t seq,
           std::shared_ptr<Work> previous, double issued_at, double hold_until, double deadline)
    : transport_(std::move(transport)),
      flat_(std::move(flat)),
      seq_(seq),
      bytes_(static_cast<int64_t>(flat_.numel() * flat_.element_size())),
      previous_(std::move(previous)),
      issued_at_(issued_at),
      hold_until_(hold_until),
      deadline_(deadline),
      completed_at_(std::numeric_limits<double>::quiet_NaN()) {}

std::string Work::describe() const {
  std::ostringstream s;
  s << "all_reduce #" << seq_ << " (" << bytes_ << " bytes, " << flat_.scalar_type() << ", "
    << transport_->name() << ") on rank " << transport_->rank() << " of "
    << transport_->world();
  return s.str();
}

double Work::completed_at() const {
  std::lock_guard<std::mutex> lock(mu_);
  return completed_at_;
}

bool Work::check_done(bool raise_if_overdue) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return true;
  }
  if (transport_->aborted())
    throw CommFailure(describe() + " cannot complete: the communicator was aborted (" +
                      transport_->abort_reason() + ")");
  bool ready = false;
  try {
    ready = transport_done();
  } catch (const std::exception& e) {
    transport_->count_failed(false);
    const std::string why = describe() + " failed: " + e.what();
    transport_->abort(why);
    throw CommFailure(why);
  }
  if (ready && previous_) {
    // Completion is reported in issue order.
    ready = previous_->check_done(false);
    if (ready) previous_.reset();
  }
  const double now = now_s();  // after the predecessor: completion times stay ordered
  if (ready && now < hold_until_) ready = false;  // the emulated link still holds it
  if (!ready) {
    if (raise_if_overdue && now > deadline_) {
      transport_->count_failed(true);
      const std::string why = describe() + " did not complete within its deadline of " +
                              std::to_string(transport_->timeout()) +
                              " s (a peer rank may have died, hung or not issued it)";
      transport_->abort(why);
      throw CommTimeout(why);
    }
    return false;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!done_) {
    done_ = true;
    completed_at_ = now;
    transport_->count_completed();
  }
  return true;
}

bool Work::is_completed() { return check_done(true); }

void Work::wait(std::optional<double> timeout_s) {
  if (check_done(true)) return;
  const double start = now_s();
  const double limit = timeout_s.value_or(transport_->timeout());
  const double deadline = start + limit;
  while (!check_done(true)) {
    const double now = now_s();
    if (now >= deadline) {
      transport_->count_failed(true);
      transport_->count_wait(now - start);
      const std::string why = describe() + ": wait timed out after " + std::to_string(limit) +
                              " s (a peer rank may have died, hung or not issued it)";
      transport_->abort(why);
      throw CommTimeout(why);
    }
    // Sleep no longer than the emulated hold or the deadline requires.
    double slice = std::min(deadline - now, 0.05);
    if (hold_until_ > now) slice = std::min(slice, hold_until_ - now);
    block_for(std::max(slice, 0.0));
  }
  transport_->count_wait(now_s() - start);
}

}  // namespace hpsgd::comm
