// What the Communicator drives: a transport issues all-reduces (mean or sum,
// in place) and can be aborted or closed. The scheduling around it (ordering,
// deadlines, link emulation, counters, the watchdog) is shared in Transport
// and Work.
//
// NOTE: [comm ownership]
// Nothing a Transport owns points back at it strongly, so dropping the last
// reference (or close()) releases it, its process group and its buffers:
//   Transport --owns--> CommState (shared), in-flight Works, Watchdog
//   Work      --owns--> CommState, its buffer, its predecessor (until complete)
//   Work      --weak--> Transport (only to abort it on a failure)
//   Watchdog  --weak--> Transport (locked for one tick at a time)
// A Work the user still holds keeps what it needs to finish (its buffer, the
// c10d work or CUDA events, the shared state), never the transport.
//
// NOTE: [watchdog]
// One thread per communicator, like c10d's ProcessGroupNCCL watchdog. It sleeps
// on a condition variable for at most Watchdog::kPeriod (0.1 s), or until the nearest
// in-flight deadline, and wakes at once on close. Each tick polls every
// in-flight Work exactly as is_completed() would (deadline counted from issue
// time, transport errors, NCCL's ncclCommGetAsyncError via poll_transport()),
// so a collective fails on time even when the training thread never waits on
// it. A failure is recorded once in CommState (kind + message) and then the
// transport is aborted (NCCL: the device-visible validity flag is cleared
// first, then emulated link holds are cancelled, then ncclCommAbort). Every
// later call into the communicator (all_reduce, check(), a Work's wait or
// is_completed) raises the recorded error with its type: CommTimeout for a
// deadline, CommFailure otherwise. The watchdog holds only a weak_ptr to the
// transport; if its tick happens to drop the last reference, the transport is
// destroyed on the watchdog thread, which then detaches instead of joining
// itself. The hot path adds nothing but a push under a short, never-blocking
// lock: no waiter holds a lock while it blocks.
//
// Beside it runs a deadline monitor that never calls into the device or the
// transport: every kPeriod it fails, as timed out, each Work not seen complete
// kGrace after its deadline. The watchdog's own queries can block: the driver
// may make them wait behind the training thread (a kernel loaded lazily waits
// for the device to go idle, holding the context) while the device is held by
// the very collective that is overdue. The abort's first, host-only steps (the
// validity flag, the link holds, NCCL's abort flag) let the device, and so the
// query, go on. A monitor pass that comes late after the previous one (the
// process was stopped: nothing was observed meanwhile) judges nothing.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "../quant.h"
#include "link_model.h"
#include "work.h"

namespace hpsgd::comm {

struct Counters {
  int64_t issued = 0, completed = 0, failed = 0, timeouts = 0, bytes = 0;
  double wait_seconds = 0.0;  // CPU time blocked in Work.wait
};

enum class ErrorKind { kNone, kFailure, kTimeout };

// What a transport and its Works share (see NOTE: [comm ownership]): identity,
// the first recorded error, counters. Holds no reference to anything.
class CommState {
 public:
  CommState(std::string name, int rank, int world, double timeout_s)
      : name(std::move(name)), rank(rank), world(world), timeout_s(timeout_s) {}

  const std::string name;
  const int rank, world;
  const double timeout_s;

  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  // Records the first error and marks the communicator aborted; true if this
  // call was the first (the caller then aborts the transport).
  bool record(ErrorKind kind, const std::string& message);
  // The recorded error, if any.
  std::optional<std::string> error() const;
  ErrorKind error_kind() const;
  // Throws the recorded error (its type), its message prefixed by `prefix`.
  [[noreturn]] void raise(const std::string& prefix = "") const;

  Counters counters() const;
  void count_issued(int64_t bytes);
  void count_completed();
  void count_failed(bool timeout);
  void count_wait(double seconds);

 private:
  std::atomic<bool> aborted_{false};
  mutable std::mutex mu_;
  ErrorKind kind_ = ErrorKind::kNone;
  std::string message_;
  Counters counters_;
};

[[noreturn]] void throw_comm_error(ErrorKind kind, const std::string& message);

class Transport;

// One 8-bit reduction's layout (docs/round-protocol.md, "8-bit wires"): rank r
// owns blocks [block_lo(r), block_lo(r) + blocks(r)) and their elements; every
// rank derives the same plan from n, so the sizes every peer sends are known.
struct QuantizedPlan {
  at::Tensor codes, scales;
  int64_t n, nb, extra, world, per;
  bool fp8;
  QuantizedPlan(at::Tensor c, at::Tensor s, int64_t extra_slots, int64_t world_size)
      : codes(std::move(c)), scales(std::move(s)), n(codes.numel()), nb(quant::num_blocks(n)),
        extra(extra_slots), world(world_size), per((nb + world_size - 1) / world_size),
        fp8(codes.scalar_type() == at::kFloat8_e4m3fn) {}
  int64_t block_lo(int64_t r) const { return std::min(r * per, nb); }
  int64_t blocks(int64_t r) const { return std::min((r + 1) * per, nb) - block_lo(r); }
  int64_t elem_lo(int64_t r) const { return std::min(block_lo(r) * quant::kBlock, n); }
  int64_t elems(int64_t r) const {
    return std::min((block_lo(r) + blocks(r)) * quant::kBlock, n) - elem_lo(r);
  }
  // Bytes rank r sends to rank d in the all-to-all (codes, scales, extra slots).
  int64_t scatter_bytes(int64_t d) const { return elems(d) + 4 * (blocks(d) + extra); }
  // Bytes rank r sends to each other rank in the all-gather (its shard).
  int64_t gather_bytes(int64_t r) const { return nb == 0 ? 0 : elems(r) + 4 * blocks(r); }
  // What rank r puts on the wire in both phases (nothing to itself).
  int64_t bytes_sent(int64_t r) const {
    int64_t b = 0;
    for (int64_t d = 0; d < world; ++d)
      if (d != r) b += scatter_bytes(d) + gather_bytes(r);
    return b;
  }
};

// See NOTE: [watchdog].
class Watchdog {
 public:
  static constexpr double kPeriod = 0.1;  // seconds between ticks at most
  // A Work past its deadline by this much was not seen complete by a running
  // watchdog (which looks every kPeriod): the monitor expires it.
  static constexpr double kGrace = 0.5;
  explicit Watchdog(std::weak_ptr<Transport> transport);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  // Wakes the threads and joins them (detaches the one it is called on).
  void stop();

 private:
  struct Control {
    std::mutex mu;
    std::condition_variable cv;
    bool stop = false;
  };
  static void run(std::shared_ptr<Control> ctl, std::weak_ptr<Transport> transport);
  static void monitor(std::shared_ptr<Control> ctl, std::weak_ptr<Transport> transport);

  std::shared_ptr<Control> ctl_;
  std::thread thread_, monitor_;
};

class Transport : public std::enable_shared_from_this<Transport> {
 public:
  Transport(std::string name, int rank, int world, double timeout_s,
            std::shared_ptr<LinkModel> link);
  virtual ~Transport();

  // Starts the watchdog; called once by make_transport() after make_shared.
  void start_watchdog();

  // Reduces `flat` in place over ranks: the mean (average) or the plain sum.
  // Checks the buffer, books the emulated link, chains issue order, then hands
  // over to the concrete transport.
  std::shared_ptr<Work> all_reduce(const at::Tensor& flat, bool average = true);
  // The 8-bit reduction (docs/round-protocol.md, "8-bit wires"), in place: `codes`
  // (int8 or float8_e4m3fn, n elements) and `scales[:num_blocks(n)]` become the
  // re-quantised sum over ranks, the same bytes on every rank; the `extra`
  // float32 slots after the scales become their plain sum over ranks (rank
  // order). Scheduled like all_reduce; `bytes` counts both phases.
  std::shared_ptr<Work> quantized_all_reduce(const at::Tensor& codes, const at::Tensor& scales,
                                             int64_t extra);

  // Stops everything: in-flight and later collectives raise CommFailure.
  void abort(const std::string& why);
  // Records `why` as the communicator's error (first one wins), then aborts.
  void fail(ErrorKind kind, const std::string& why);
  // Releases the transport: stops the watchdog, drops the in-flight list, and
  // tears the transport down (NCCL: finalize when clean, else abort). Never
  // waits on a peer; Works still held stay valid. Idempotent.
  void close();
  bool closed() const { return closed_.load(); }

  bool aborted() const { return state_->aborted(); }
  std::string abort_reason() const { return state_->error().value_or(""); }
  std::optional<std::string> error() const { return state_->error(); }
  // Raises the recorded error, if any (cheap: one atomic load when healthy).
  void check_usable() const;

  int rank() const { return state_->rank; }
  int world() const { return state_->world; }
  double timeout() const { return state_->timeout_s; }
  const std::shared_ptr<LinkModel>& link() const { return link_; }
  const std::string& name() const { return state_->name; }
  const std::shared_ptr<CommState>& state() const { return state_; }

  Counters counters() const { return state_->counters(); }

  // One watchdog pass; returns the nearest in-flight deadline (or +inf).
  double watchdog_tick();
  // One deadline-monitor pass (host only); `punctual`: the previous one was
  // less than kGrace ago.
  void expire_overdue(bool punctual);
  size_t in_flight() const;

 protected:
  // The transport-specific part: issue `flat` (validated) and return its Work.
  virtual std::shared_ptr<Work> issue(const at::Tensor& flat, bool average, int64_t seq,
                                      std::shared_ptr<Work> previous, double issued_at,
                                      double hold_until, double deadline) = 0;
  virtual std::shared_ptr<Work> issue_quantized(const QuantizedPlan& plan, int64_t seq,
                                                std::shared_ptr<Work> previous, double issued_at,
                                                double hold_until, double deadline) = 0;
  virtual void abort_transport() = 0;
  // Called once by close(), after the watchdog stopped. Must not block on peers.
  virtual void close_transport() {}
  // Polled by the watchdog every tick (NCCL: asynchronous errors). Throws on error.
  virtual void poll_transport() {}
  // `what` names the argument in errors ("all_reduce_async: flat").
  virtual void check_buffer(const at::Tensor& flat, const char* what) const = 0;

  // Stops the watchdog; derived destructors call it before tearing down.
  void stop_watchdog();

 private:
  void prune_locked(std::vector<std::shared_ptr<Work>>& out);  // caller holds inflight_mu_
  // The scheduling every collective shares: issue order, link booking,
  // deadline, in-flight list, counters; `issue` does the transport's part.
  template <class Issue>
  std::shared_ptr<Work> schedule(const char* what, int64_t bytes, Issue&& issue);

  std::shared_ptr<CommState> state_;
  std::shared_ptr<LinkModel> link_;
  std::atomic<bool> closed_{false};
  std::atomic<bool> transport_aborted_{false};
  std::mutex issue_mu_;  // one issue order on every rank; held across issue()
  mutable std::mutex inflight_mu_;  // never held across a blocking call
  std::deque<std::shared_ptr<Work>> inflight_;  // issue order; completed ones pruned
  int64_t next_seq_ = 0;  // under issue_mu_
  std::mutex watchdog_mu_;
  std::unique_ptr<Watchdog> watchdog_;
};

// A transport ready for use: owned by a shared_ptr (the watchdog holds a weak
// one, NOTE: [comm ownership]) with its watchdog running. The one way to make
// a transport, for the Python factories and C++ callers alike:
//   auto comm = hpsgd::comm::make_transport<hpsgd::comm::C10dTransport>(pg, /*timeout_s=*/60.0);
template <class T, class... Args>
std::shared_ptr<T> make_transport(Args&&... args) {
  static_assert(std::is_base_of_v<Transport, T>, "make_transport<T>: T must derive from Transport");
  auto t = std::make_shared<T>(std::forward<Args>(args)...);
  t->start_watchdog();
  return t;
}

}  // namespace hpsgd::comm
