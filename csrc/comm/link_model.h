// Link emulation (for benchmarks and the main job on one machine; it is an
// emulation, not a network): one serial link of `bandwidth` bytes/s and
// `latency` seconds. A collective of B bytes issued at t finishes, as modelled,
// at max(t, previous finish) + latency + B / bandwidth; its completion is held
// until then. Shared by the Communicator and the baselines' hooks so every
// algorithm sees the same link.
#pragma once

#include <algorithm>
#include <mutex>

#include "../checks.h"

namespace hpsgd::comm {

class LinkModel {
 public:
  LinkModel(double bandwidth_bytes_per_s, double latency_s)
      : bandwidth_(bandwidth_bytes_per_s), latency_(latency_s) {
    HPSGD_CHECK_ARG(bandwidth_ > 0.0, "link: bandwidth is ", bandwidth_,
                    " bytes/s; expected a positive number");
    HPSGD_CHECK_ARG(latency_ >= 0.0, "link: latency is ", latency_,
                    " s; expected a number >= 0");
  }

  // Modelled seconds on the wire for `bytes`, ignoring queueing.
  double duration(double bytes) const { return latency_ + bytes / bandwidth_; }

  // Books the link for a transfer issued at `issued` (seconds, monotonic
  // clock) and returns its modelled finish time.
  double reserve(double bytes, double issued) {
    std::lock_guard<std::mutex> lock(mu_);
    busy_until_ = std::max(issued, busy_until_) + duration(bytes);
    return busy_until_;
  }

  double bandwidth() const { return bandwidth_; }
  double latency() const { return latency_; }

 private:
  double bandwidth_, latency_;
  std::mutex mu_;
  double busy_until_ = 0.0;
};

}  // namespace hpsgd::comm
