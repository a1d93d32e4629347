// What the Communicator drives: a transport issues all-reduces (mean, in
// place) and can be aborted. The scheduling around it (ordering, deadlines,
// link emulation, counters) is shared in Transport and Work.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "link_model.h"
#include "work.h"

namespace hpsgd::comm {

struct Counters {
  int64_t issued = 0, completed = 0, failed = 0, timeouts = 0, bytes = 0;
  double wait_seconds = 0.0;  // CPU time blocked in Work.wait
};

class Transport : public std::enable_shared_from_this<Transport> {
 public:
  Transport(int rank, int world, double timeout_s, std::shared_ptr<LinkModel> link);
  virtual ~Transport() = default;

  // Mean over ranks, in place. Checks the buffer, books the emulated link,
  // chains issue order, then hands over to the concrete transport.
  std::shared_ptr<Work> all_reduce(const at::Tensor& flat);

  // Stops everything: in-flight and later collectives raise CommFailure.
  void abort(const std::string& why);
  bool aborted() const { return aborted_.load(); }
  std::string abort_reason() const;
  void check_usable() const;

  int rank() const { return rank_; }
  int world() const { return world_; }
  double timeout() const { return timeout_s_; }
  const std::shared_ptr<LinkModel>& link() const { return link_; }
  virtual std::string name() const = 0;

  Counters counters() const;
  void count_completed();
  void count_failed(bool timeout);
  void count_wait(double seconds);

 protected:
  // The transport-specific part: issue `flat` (validated) and return its Work.
  virtual std::shared_ptr<Work> issue(const at::Tensor& flat, int64_t seq,
                                      std::shared_ptr<Work> previous, double issued_at,
                                      double hold_until, double deadline) = 0;
  virtual void abort_transport() = 0;
  virtual void check_buffer(const at::Tensor& flat) const = 0;

 private:
  const int rank_, world_;
  const double timeout_s_;
  std::shared_ptr<LinkModel> link_;
  std::atomic<bool> aborted_{false};
  mutable std::mutex mu_;
  std::string abort_reason_;
  Counters counters_;
  std::shared_ptr<Work> last_;
};

}  // namespace hpsgd::comm
