// One in-flight all-reduce. Shared by both transports: deadlines, issue-order
// completion, link-emulation hold, telemetry and error reporting live here;
// a transport supplies only "is the device/transport done" and how to block.
// A Work never keeps its transport alive (NOTE: [comm ownership] in
// transport.h); the watchdog polls it like is_completed() (NOTE: [watchdog]).
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <condition_variable>
#include <limits>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

namespace hpsgd::comm {

// Raised (as hpsgd_ext.CommTimeoutError, a TimeoutError and a CommError) when
// a deadline passes.
struct CommTimeout : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Raised (as hpsgd_ext.CommError, a RuntimeError) when a collective fails or
// the communicator was aborted.
struct CommFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Transport;
class CommState;
enum class ErrorKind;

class Work {
 public:
  // `what` (a literal) names the collective in errors; `bytes` < 0: flat's size.
  Work(const std::shared_ptr<Transport>& transport, at::Tensor flat, int64_t seq,
       std::shared_ptr<Work> previous, double issued_at, double hold_until, double deadline,
       const char* what = "all_reduce", int64_t bytes = -1);
  virtual ~Work() = default;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;

  // Never blocks. True once this collective and every earlier one are done and
  // the emulated link has released it; raises if it failed or is overdue.
  bool is_completed();
  // Blocks the CPU until completed, at most `timeout_s` (the communicator's
  // timeout when unset). On time-out the communicator is aborted and
  // CommTimeout raised; every rank's error names the collective and the rank.
  void wait(std::optional<double> timeout_s);
  // CUDA: the caller's current stream waits for the result (no CPU block).
  // CPU: nothing to order.
  virtual void synchronize_stream() {}
  // CUDA: a 1-element float32 tensor aliasing mapped host memory, 1 while the
  // communicator is healthy, cleared to 0 before it is aborted, so a kernel
  // can refuse a half-reduced buffer (NOTE: [watchdog]). CPU: none.
  virtual std::optional<at::Tensor> valid_flag() const { return std::nullopt; }
  // The watchdog's host-only judgement (NOTE: [watchdog]): fails this Work as
  // timed out if it is not done `grace` seconds past its deadline, querying
  // neither the device nor the transport.
  void expire_if_overdue(double now, double grace);
  // Done (true) without polling anything; for pruning.
  bool done() const { return done_.load(std::memory_order_acquire); }
  double deadline() const { return deadline_; }

  int64_t seq() const { return seq_; }
  int64_t bytes() const { return bytes_; }
  double issued_at() const { return issued_at_; }
  double completed_at() const;   // NaN until observed complete
  virtual double device_seconds() { return std::numeric_limits<double>::quiet_NaN(); }
  std::string describe() const;

 protected:
  // Non-blocking: has the transport finished (and the device, for CUDA)? Throws
  // CommFailure on a transport error.
  virtual bool transport_done() = 0;
  // Block up to `seconds` for progress (a condition variable or a short sleep).
  virtual void block_for(double seconds) = 0;

  const std::shared_ptr<CommState> state_;
  const std::weak_ptr<Transport> transport_;  // to abort it; never kept alive
  at::Tensor flat_;  // keeps the buffer alive until the collective is done

 private:
  bool check_done(bool raise_if_overdue);
  // Records this Work's own error and the communicator's (first wins), aborts
  // the transport, and throws.
  [[noreturn]] void fail(ErrorKind kind, const std::string& why, bool count);
  [[noreturn]] void raise_own() const;  // caller holds mu_

  const char* const what_;
  const int64_t seq_;
  const int64_t bytes_;
  const double issued_at_, hold_until_, deadline_;
  mutable std::mutex mu_;  // never held while blocking or polling the transport
  std::shared_ptr<Work> previous_;  // dropped once complete: no chains
  double completed_at_;
  std::atomic<bool> done_{false};
  int own_error_kind_ = 0;  // 0 none, else static_cast<int>(ErrorKind)
  std::string own_error_;
};

}  // namespace hpsgd::comm
