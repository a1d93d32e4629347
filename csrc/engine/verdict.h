// The non-finite rule: docs/round-protocol.md, "Non-finite rounds". The device
// decides (the verdict tensor round_step consumes); the host learns it later
// without waiting (VerdictPolicy) and then warns, counts and raises.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace hpsgd::engine {

// Raised (as Python's FloatingPointError) after max_bad_rounds consecutive
// rounds were not merged.
struct NonFiniteRounds : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The device side, through the dispatcher (hpsgd::own_flag, hpsgd::reduced_verdict:
// csrc/cpu, csrc/cuda; docs/round-protocol.md, "Verdict kernels").
//
// Zeroes the flag slots of `flat` (after its `numel` segment elements) and sets
// this rank's own one when its change is not finite (with `check`).
void own_flag(const at::Tensor& flat, int64_t numel, int rank, int world, bool check);

// Writes the round's verdict into `info`, float32 [1 + world] on the buffers'
// device: [0] is 1 when every reduced element is finite, times `valid` (the
// communicator's flag) when given; [1 + j] is 1 when rank j flagged its own
// change in any flat.
void reduced_verdict(const std::vector<at::Tensor>& flats, const std::vector<int64_t>& numels,
                     int world, const std::optional<at::Tensor>& valid, const at::Tensor& info);

struct VerdictCounts {
  int64_t skipped_rounds = 0;
  int64_t consecutive_bad_rounds = 0;
  bool last_round_discarded = false;
};

// Reads verdicts in round order without blocking, and applies the policy.
// Warnings are queued for the caller (Python turns them into RuntimeWarning).
class VerdictPolicy {
 public:
  VerdictPolicy(int rank, int world, int64_t max_bad_rounds, std::string comm_dtype_name);
  // Movable, not copyable: a copy would share the ring's pinned slots and events.
  VerdictPolicy(VerdictPolicy&&) = default;
  VerdictPolicy& operator=(VerdictPolicy&&) = default;
  VerdictPolicy(const VerdictPolicy&) = delete;
  VerdictPolicy& operator=(const VerdictPolicy&) = delete;

  // Queues `info` (reduced_verdict's) of round `round`. CUDA: a copy into
  // pinned memory ordered by an event, so the caller may overwrite `info` later
  // in stream order (the copies and events are a ring, reused round after
  // round: a boundary allocates nothing and runs no ATen op for it); CPU: the
  // tensor itself, so the caller drains before it writes `info` again.
  void push(int64_t round, const at::Tensor& info);
  // Applies every verdict whose value reached the host; with `block`, all of
  // them (waiting for the device). Throws NonFiniteRounds.
  void drain(bool block);
  size_t pending() const { return queue_.size(); }

  // The next round carries real changes again (after synchronize()).
  void forget_discard() { counts_.last_round_discarded = false; }
  const VerdictCounts& counts() const { return counts_; }
  void load(const VerdictCounts& c);

  std::vector<std::string> take_warnings();

 private:
  // CUDA: one pinned host copy of a verdict and the event after which it is
  // readable; busy from push until drained.
  struct Slot {
    at::Tensor host;
    std::shared_ptr<void> event;  // an at::cuda::CUDAEvent (verdict.cpp; no CUDA header here)
    std::optional<c10::Stream> stream;  // the one the host allocator was told of
    bool busy = false;
  };
  struct Pending {
    int64_t round;
    at::Tensor host;  // readable once ready(false) is true
    int slot;         // in slots_, or -1 (CPU: readable at once)
  };
  bool ready(const Pending& p, bool block) const;  // may wait when block
  void apply(int64_t round, const at::Tensor& info);

  int rank_, world_;
  int64_t max_bad_rounds_;
  std::string comm_dtype_name_;
  std::deque<Pending> queue_;
  std::vector<Slot> slots_;
  VerdictCounts counts_;
  std::vector<std::string> warnings_;
};

}  // namespace hpsgd::engine
