// One in-flight all-reduce. Shared by both transports: deadlines, issue-order
// completion, link-emulation hold, telemetry and error reporting live here;
// a transport supplies only "is the device/transport done" and how to block.
#pragma once

#include <ATen/ATen.h>

#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

namespace hpsgd::comm {

// Raised (as hpsgd_ext.CommTimeoutError, a TimeoutError) when a deadline passes.
struct CommTimeout : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Raised (as hpsgd_ext.CommError, a RuntimeError) when a collective fails or
// the communicator was aborted.
struct CommFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Transport;

class Work {
 public:
  Work(std::shared_ptr<Transport> transport, at::Tensor flat, int64_t seq,
       std::shared_ptr<Work> previous, double issued_at, double hold_until, double deadline);
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

  std::shared_ptr<Transport> transport_;
  at::Tensor flat_;  // keeps the buffer alive until the collective is done

 private:
  bool check_done(bool raise_if_overdue);

  const int64_t seq_;
  const int64_t bytes_;
  std::shared_ptr<Work> previous_;  // dropped once complete: no chains
  const double issued_at_, hold_until_, deadline_;
  mutable std::mutex mu_;
  double completed_at_;
  bool done_ = false;
};

}  // namespace hpsgd::comm
