#include "transport.h"

#include "../checks.h"
#include "clock.h"

namespace hpsgd::comm {

Transport::Transport(int rank, int world, double timeout_s, std::shared_ptr<LinkModel> link)
    : rank_(rank), world_(world), timeout_s_(timeout_s), link_(std::move(link)) {
  HPSGD_CHECK_ARG(world > 0 && rank >= 0 && rank < world, "Communicator: rank ", rank,
                  " of world size ", world, " is invalid");
  HPSGD_CHECK_ARG(timeout_s > 0.0, "Communicator: timeout is ", timeout_s,
                  " s; expected a positive duration");
}

std::shared_ptr<Work> Transport::all_reduce(const at::Tensor& flat) {
  check_usable();
  HPSGD_CHECK_ARG(flat.defined(), "all_reduce_async: flat is undefined; expected a tensor");
  HPSGD_CHECK_TYPE(flat.scalar_type() == at::kFloat || flat.scalar_type() == at::kBFloat16 ||
                       flat.scalar_type() == at::kHalf,
                   "all_reduce_async: flat has dtype ", flat.scalar_type(),
                   "; expected float32, bfloat16 or float16");
  HPSGD_CHECK_ARG(flat.is_contiguous() && flat.layout() == at::kStrided,
                  "all_reduce_async: flat is not a contiguous dense tensor; expected one "
                  "(the reduction is written in place)");
  check_buffer(flat);

  std::string failure;
  {
    std::lock_guard<std::mutex> lock(mu_);  // one issue order on every rank
    const double issued = now_s();
    const double bytes = static_cast<double>(flat.numel() * flat.element_size());
    const double hold = link_ ? link_->reserve(bytes, issued) : 0.0;
    // The deadline counts from when the collective can start on the link.
    const double deadline = std::max(issued, hold) + timeout_s_;
    const int64_t seq = counters_.issued;
    try {
      auto work = issue(flat, seq, last_, issued, hold, deadline);
      last_ = work;
      counters_.issued += 1;
      counters_.bytes += static_cast<int64_t>(bytes);
      return work;
    } catch (const std::exception& e) {
      counters_.failed += 1;
      failure = "issuing all_reduce #" + std::to_string(seq) + " on rank " +
                std::to_string(rank_) + " failed: " + e.what();
    }
  }
  abort(failure);  // outside the lock: aborting a transport may call back in
  throw CommFailure(failure);
}

void Transport::abort(const std::string& why) {
  bool expected = false;
  if (!aborted_.compare_exchange_strong(expected, true)) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    abort_reason_ = why;
  }
  abort_transport();
}

std::string Transport::abort_reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return abort_reason_;
}

void Transport::check_usable() const {
  if (aborted_.load())
    throw CommFailure("the communicator was aborted: " + abort_reason());
}

Counters Transport::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

void Transport::count_completed() {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.completed += 1;
}

void Transport::count_failed(bool timeout) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.failed += 1;
  if (timeout) counters_.timeouts += 1;
}

void Transport::count_wait(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.wait_seconds += seconds;
}

}  // namespace hpsgd::comm
