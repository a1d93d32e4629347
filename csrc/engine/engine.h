// The round engine: what torch's Reducer is to DistributedDataParallel. One
// object owns a set of tensor groups' buffers (anchors, outer momenta, `sent`,
// the double-buffered flats), the round in flight, the boundary schedule (a
// fixed H or the auto window), the non-finite policy, synchronize()'s agreement
// and catch-up, and the counters. It needs no Python: a c10d ProcessGroup
// (through a comm::Transport) and lists of tensors. The rules it carries out are
// written once, in docs/round-protocol.md; comments here point to its sections.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../comm/transport.h"
#include "verdict.h"
#include "window.h"

namespace hpsgd::engine {

// Tensors reduced together: one dtype, one outer step. From C++,
// `GroupSpec{model->parameters()}` is a group of same-dtype parameters sent in
// their own dtype with the plain merge (DESIGN.md section 2).
struct GroupSpec {
  std::vector<at::Tensor> live;  // the replica, trained by the user's optimizer
  std::optional<at::ScalarType> wire_dtype;  // of the flats and `sent`; default: live's dtype
  double lr = 1.0;               // outer step on the averaged change
  double momentum = 0.0;
  bool nesterov = false;
  int64_t fragment = 0;  // which fragment's rounds carry it (EngineOptions::fragments)
};

struct EngineOptions {
  int64_t sync_every = 0;  // a boundary every H step calls; 0: the auto window
  bool keep = true;        // replica rule "keep" (else "reset")
  bool check_finite = true;
  int64_t max_bad_rounds = 3;
  std::string comm_dtype_name = "the parameters' dtype";  // named in overflow messages
  double timeout_s = 300.0;  // of the control collective (the data one is the transport's)
  WindowConfig window{};     // auto only; count_background_cpu is set from the device
  // Streaming rounds: the groups form `fragments` fragments (GroupSpec::fragment)
  // and each boundary closes one fragment's window in rotation
  // (docs/round-protocol.md, "Fragments"). 1: every boundary closes them all.
  int64_t fragments = 1;
};

struct Counters {
  int64_t rounds = 0, local_steps = 0, skipped_steps = 0, bytes_reduced = 0,
          catch_up_rounds = 0, synchronizations = 0, steps_in_window = 0;
  double exposed_seconds = 0.0, boundary_seconds = 0.0, comm_seconds = 0.0;
};

// One group's buffers, allocated once.
struct Group {
  std::vector<at::Tensor> live, anchors, momenta;  // momenta empty without outer momentum
  at::Tensor flats[2];  // [segments | one flag slot per rank]; see NOTE: [double buffer]
  // An 8-bit wire (docs/round-protocol.md, "8-bit wires"): flats hold the codes
  // only, and scales[i] is [one float32 scale per block | one flag slot per rank].
  at::Tensor scales[2];
  at::Tensor sent;      // "keep" only: what was last put on the wire (8-bit: float32)
  double lr, momentum;
  bool nesterov;
  int64_t numel;
  int64_t fragment = 0;
  at::ScalarType wire = at::kFloat;  // the flats' dtype (and `sent`'s but for 8 bits)
  bool quantized() const { return scales[0].defined(); }
  // The buffer the flag slots follow, and how many elements precede them.
  const at::Tensor& flagged(int i) const { return quantized() ? scales[i] : flats[i]; }
  int64_t flagged_numel() const;
  // Bytes one round puts on the wire per rank (before the transport's own traffic).
  int64_t round_bytes() const;
};

class Engine {
 public:
  // `control` carries synchronize()'s agreement (never matched against a round:
  // docs/round-protocol.md, "Channels"); it may be null when synchronize() is
  // never called.
  Engine(std::vector<GroupSpec> groups, std::shared_ptr<comm::Transport> comm,
         c10::intrusive_ptr<c10d::ProcessGroup> control, EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // --- the step hook -------------------------------------------------------
  // Counts one step call (`skipped`: a step a GradScaler skipped) and says
  // whether it ends the window. The caller may check its tensors, then calls
  // boundary(). on_step() is both, for callers with nothing to check.
  bool step(bool skipped = false);
  void boundary();
  void on_step(bool skipped = false) {
    if (step(skipped)) boundary();
  }

  // Collective: docs/round-protocol.md, "synchronize()".
  void synchronize();
  // Host waits for the round in flight (not merged) and reads every verdict.
  void quiesce();
  // Drops the round in flight (not waited for) and the communicator reference.
  void close();

  // --- state ---------------------------------------------------------------
  std::vector<Group>& groups() { return groups_; }
  // The tensor the model now holds in place of live[index] (same shape/dtype).
  void replace_live(size_t group, size_t index, const at::Tensor& t);
  bool pending() const { return inflight_.has_value(); }
  // The fragment whose round is pending (or would be): the rounds rotate.
  int64_t pending_fragment() const { return fragment_of(counters_.rounds - 1); }
  // The reduced round still to be merged into each group (valid when pending()).
  std::vector<at::Tensor> reduced() const;
  // Their scales (8-bit groups; undefined for the others).
  std::vector<at::Tensor> reduced_scales() const;
  const Counters& counters() const { return counters_; }
  const VerdictCounts& verdicts() const { return verdicts_.counts(); }
  bool in_sync() const { return in_sync_; }
  const AutoWindow* window() const { return window_ ? &*window_ : nullptr; }
  const EngineOptions& options() const { return opts_; }
  int rank() const { return rank_; }
  int world() const { return world_; }
  // After the caller restored the buffers: counters, the verdict counts,
  // whether a (completed) reduction is pending, and whether every rank's
  // state is the same.
  void restore(const Counters& c, const VerdictCounts& v, bool pending, bool in_sync);
  // Warnings the policy recorded since the last call (Python: RuntimeWarning).
  std::vector<std::string> take_warnings() { return verdicts_.take_warnings(); }
  // Applies the verdicts that have reached the host (never waits).
  void poll_verdicts() { verdicts_.drain(false); }

 private:
  void check_usable() const;  // closed, or the communicator's recorded failure
  void share_flats();
  // `final_merges`: the merged round's fragment leaves its replica equal to the
  // global model (synchronize()'s sweep; docs/round-protocol.md, "Fragments").
  void run_boundary(bool final_merges = false);
  // `reduced`, `scratch`: indices of g's flats (and scales).
  void merge_only(Group& g, int reduced, int scratch, const at::Tensor& verdict, bool final_merge);
  double await_inflight(bool host);
  at::Tensor verdict_of(int prev, int64_t fragment);
  int64_t fragment_of(int64_t round) const {
    const int64_t f = opts_.fragments;
    return ((round % f) + f) % f;
  }
  void account();
  void check_not_capturing() const;
  int64_t agree_on_rounds();

  std::vector<Group> groups_;
  std::shared_ptr<comm::Transport> comm_;
  c10::intrusive_ptr<c10d::ProcessGroup> control_;
  EngineOptions opts_;
  int rank_, world_;
  at::Device device_;
  // NOTE: [double buffer] flats[fill_] is filled at the next boundary while
  // flats[1 - fill_] is (or holds) the round in flight.
  int fill_ = 0;
  int in_flight_index() const { return 1 - fill_; }
  // The round in flight: one Work per group; empty after a restore (completed);
  // nullopt when nothing is in flight.
  std::optional<std::vector<std::shared_ptr<comm::Work>>> inflight_;
  bool due_ = false;    // step() ended the window; boundary() then closes the step
  bool in_sync_ = true;  // just built or synchronized: every rank's state equal
  std::optional<AutoWindow> window_;
  // reduced_verdict's output, allocated once (check_finite only) and rewritten
  // by every round in stream order (see VerdictPolicy::push); verdict_ is its
  // [0], what round_step reads.
  at::Tensor info_, verdict_;
  VerdictPolicy verdicts_;
  Counters counters_;
};

// Raises a failed control collective as CommTimeout/CommFailure naming what was
// being agreed, the rank and the deadline (Python's construction checks use it too).
[[noreturn]] void raise_control_error(const std::string& what, int rank, int world, double timeout_s,
                                      const std::string& cause);

}  // namespace hpsgd::engine
