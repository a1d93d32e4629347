#include "engine.h"

#ifdef HPSGD_WITH_CUDA
#include "../cuda/kernels.h"
#endif

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>

#include "../arg_checks.h"
#include "../checks.h"
#include "../comm/clock.h"
#include "../quant.h"
#include "../round_step_call.h"

#ifdef HPSGD_WITH_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace hpsgd::engine {
namespace {

using comm::now_s;

// hpsgd::round_step through the dispatcher (round_step_call.h). Flats are
// given by index: an 8-bit group passes its codes and their scales.
void round_step(const Group& g, std::optional<int> reduced, int out,
                const std::optional<at::Tensor>& sent, int64_t divisor,
                const std::optional<at::Tensor>& verdict) {
  std::optional<at::TensorList> momenta;
  if (!g.momenta.empty()) momenta = at::TensorList(g.momenta);
  std::optional<at::Tensor> red, out_scales, red_scales;
  if (reduced) red = g.flats[*reduced];
  if (g.quantized()) {
    out_scales = g.scales[out];
    if (reduced) red_scales = g.scales[*reduced];
  }
  round_step_op().call(g.live, g.anchors, red, g.flats[out], g.lr, momenta, g.momentum,
                       g.nesterov, sent, divisor, verdict, out_scales, red_scales);
}

std::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace

int64_t Group::flagged_numel() const { return quantized() ? quant::num_blocks(numel) : numel; }

int64_t Group::round_bytes() const {
  int64_t b = flats[0].numel() * flats[0].element_size();
  if (quantized()) b += scales[0].numel() * scales[0].element_size();
  return b;
}

void raise_control_error(const std::string& what, int rank, int world, double timeout_s,
                         const std::string& cause) {
  char secs[32];
  std::snprintf(secs, sizeof(secs), "%g", timeout_s);
  const std::string where = "HPSGD: " + what + " with the other ranks failed on rank " +
                            std::to_string(rank) + " of " + std::to_string(world) + " (timeout " +
                            secs + " s)";
  std::string lower = cause;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower.find("timed out") != std::string::npos || lower.find("timeout") != std::string::npos)
    throw comm::CommTimeout(where +
                            ": a rank did not take part in time (it may have died, hung, or "
                            "skipped this call): " + cause);
  throw comm::CommFailure(where + ": " + cause);
}

Engine::Engine(std::vector<GroupSpec> specs, std::shared_ptr<comm::Transport> comm,
               c10::intrusive_ptr<c10d::ProcessGroup> control, EngineOptions options)
    : comm_(std::move(comm)),
      control_(std::move(control)),
      opts_(std::move(options)),
      rank_(0),
      world_(1),
      device_(at::kCPU),
      verdicts_(0, 1, 1, "") {
  HPSGD_CHECK_ARG(comm_ != nullptr, "Engine: comm is null; expected a communicator");
  HPSGD_CHECK_ARG(!specs.empty(), "Engine: groups is empty; expected at least one group of tensors");
  HPSGD_CHECK_ARG(opts_.sync_every >= 0, "Engine: sync_every is ", opts_.sync_every,
                  "; expected an int >= 1 (or 0 for the auto window)");
  HPSGD_CHECK_ARG(opts_.max_bad_rounds >= 1, "Engine: max_bad_rounds is ", opts_.max_bad_rounds,
                  "; expected an int >= 1");
  HPSGD_CHECK_ARG(opts_.timeout_s > 0.0 && std::isfinite(opts_.timeout_s), "Engine: timeout is ",
                  opts_.timeout_s, " s; expected a positive, finite duration");
  HPSGD_CHECK_ARG(opts_.fragments >= 1, "Engine: fragments is ", opts_.fragments,
                  "; expected an int >= 1");
  {
    std::vector<bool> used(static_cast<size_t>(opts_.fragments), false);
    for (size_t k = 0; k < specs.size(); ++k) {
      const int64_t f = specs[k].fragment;
      HPSGD_CHECK_ARG(f >= 0 && f < opts_.fragments, "Engine: groups[", k, "] is in fragment ", f,
                      "; expected 0 to ", opts_.fragments - 1);
      used[static_cast<size_t>(f)] = true;
    }
    for (size_t f = 0; f < used.size(); ++f)
      HPSGD_CHECK_ARG(used[f], "Engine: fragment ", f, " has no group; expected every fragment of ",
                      opts_.fragments, " to hold at least one");
  }
  rank_ = comm_->rank();
  world_ = comm_->world();
  if (control_) {
    HPSGD_CHECK_ARG(control_->getSize() == world_, "Engine: the control group spans ",
                    control_->getSize(), " ranks but the communicator ", world_,
                    "; expected the same ranks");
  }
  HPSGD_CHECK_ARG(!specs[0].live.empty() && specs[0].live[0].defined(),
                  "Engine: groups[0] has no tensors; expected at least one");
  device_ = specs[0].live[0].device();
  for (size_t k = 0; k < specs.size(); ++k) {
    GroupSpec& s = specs[k];
    HPSGD_CHECK_ARG(!s.live.empty(), "Engine: groups[", k, "] has no tensors; expected at least one");
    for (size_t i = 0; i < s.live.size(); ++i) {
      const at::Tensor& t = s.live[i];
      HPSGD_CHECK_ARG(t.defined() && t.device() == device_, "Engine: groups[", k, "] tensor ", i,
                      " is not on ", device_, "; expected every tensor on one device");
      HPSGD_CHECK_ARG(t.dtype() == s.live[0].dtype(), "Engine: groups[", k, "] mixes dtypes ",
                      s.live[0].scalar_type(), " and ", t.scalar_type(), "; expected one dtype");
    }
    Group g;
    g.live = s.live;
    // 16-bit parameters keep a float32 global model: the averaged change is
    // small and would round away in the anchor's own dtype.
    for (const at::Tensor& t : g.live)
      g.anchors.push_back(t.detach().to(at::kFloat, /*non_blocking=*/false, /*copy=*/true));
    g.numel = 0;
    for (const at::Tensor& t : g.live) g.numel += t.numel();
    const auto opts =
        at::TensorOptions().dtype(s.wire_dtype.value_or(s.live[0].scalar_type())).device(device_);
    const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device_);
    if (is_code_dtype(opts.dtype().toScalarType())) {
      // Codes and scales of their own: at 1 byte an element, sharing them between
      // fragments (share_flats) would save little.
      for (int i = 0; i < 2; ++i) {
        g.flats[i] = at::zeros({g.numel}, opts);
        g.scales[i] = at::zeros({quant::num_blocks(g.numel) + world_}, f32);
      }
    } else if (opts_.fragments == 1) {
      for (auto& f : g.flats) f = at::zeros({g.numel + world_}, opts);  // else: share_flats()
    }
    if (opts_.keep) g.sent = at::zeros({g.numel}, g.quantized() ? f32 : opts);
    if (s.momentum > 0.0)
      for (const at::Tensor& a : g.anchors) g.momenta.push_back(at::zeros_like(a));
    g.lr = s.lr;
    g.momentum = s.momentum;
    g.nesterov = s.nesterov;
    g.fragment = s.fragment;
    g.wire = opts.dtype().toScalarType();
    groups_.push_back(std::move(g));
  }
  if (opts_.fragments > 1) share_flats();
  verdicts_ = VerdictPolicy(rank_, world_, opts_.max_bad_rounds, opts_.comm_dtype_name);
  if (opts_.check_finite) {
    info_ = at::zeros({1 + world_}, at::TensorOptions().dtype(at::kFloat).device(device_));
    verdict_ = info_.narrow(0, 0, 1);
  }
#ifdef HPSGD_WITH_CUDA
  // Under CUDA lazy loading a kernel's first launch may wait for the device to go
  // idle, so one first launched at a later boundary would wait behind the round
  // in flight (or an emulated hold): load ours (the verdict's included) now.
  if (device_.is_cuda()) hpsgd::cuda::preload_kernels();
#endif
  if (opts_.sync_every == 0) {
    // On CUDA the transport runs on the GPU: only the boundary counts as a round's cost.
    opts_.window.count_background_cpu = device_.is_cpu();
    window_.emplace(opts_.window);
  }
}

Engine::~Engine() = default;

void Engine::share_flats() {
  // docs/round-protocol.md, "Fragments": a round carries one fragment, so the
  // fragments' flats are views into two buffers per wire dtype, each as large as
  // the largest fragment's share of that dtype: the round in flight and the one
  // being filled (and, at a boundary, a merge's scratch output before the new
  // round overwrites it).
  std::map<at::ScalarType, std::vector<int64_t>> used;  // per dtype: elements per fragment
  std::vector<int64_t> offset(groups_.size());
  for (size_t k = 0; k < groups_.size(); ++k) {
    if (groups_[k].quantized()) continue;  // buffers of their own (constructor)
    auto& per = used[groups_[k].wire];
    per.resize(static_cast<size_t>(opts_.fragments), 0);
    offset[k] = per[static_cast<size_t>(groups_[k].fragment)];
    per[static_cast<size_t>(groups_[k].fragment)] += groups_[k].numel + world_;
  }
  for (const auto& [dtype, per] : used) {
    const int64_t size = *std::max_element(per.begin(), per.end());
    at::Tensor buffers[2];
    for (auto& b : buffers) b = at::zeros({size}, at::TensorOptions().dtype(dtype).device(device_));
    for (size_t k = 0; k < groups_.size(); ++k) {
      if (groups_[k].wire != dtype || groups_[k].quantized()) continue;
      for (int i = 0; i < 2; ++i)
        groups_[k].flats[i] = buffers[i].narrow(0, offset[k], groups_[k].numel + world_);
    }
  }
}

void Engine::check_not_capturing() const {
#ifdef HPSGD_WITH_CUDA
  if (device_.is_cuda() &&
      c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None)
    HPSGD_CHECK(false,
                "HPSGD: a round boundary inside CUDA graph capture; a boundary issues a collective on "
                "HPSGD's own stream and reads host-side state, which a replayed graph would not redo. "
                "Capture the forward/backward/step only and let optimizer.step()'s hook run outside "
                "the graph (docs/round-protocol.md, \"CUDA graphs\")");
#endif
}

bool Engine::step(bool skipped) {
  check_usable();  // a failure the watchdog recorded surfaces at the next step
  in_sync_ = false;
  counters_.steps_in_window += 1;
  (skipped ? counters_.skipped_steps : counters_.local_steps) += 1;
  if (!window_) {
    due_ = counters_.steps_in_window >= opts_.sync_every;
    return due_;
  }
  // The paper's rule with a measured minimum (docs/round-protocol.md, "Boundary").
  // A round's works complete in issue order: its last one answers for every group.
  const double now = now_s();
  const bool reduced = !inflight_ || inflight_->empty() || inflight_->back()->is_completed();
  due_ = window_->should_end(now, counters_.steps_in_window, reduced);
  if (!due_) window_->step_done(now);
  return due_;
}

void Engine::check_usable() const {
  HPSGD_CHECK(comm_ != nullptr, "HPSGD: this engine is closed");
  comm_->check_usable();
}

void Engine::boundary() {
  check_usable();
  const bool closes_step = due_ && window_;
  due_ = false;
  run_boundary();
  if (closes_step) window_->step_done(now_s());
}

double Engine::await_inflight(bool host) {
  // CPU: the host waits for the reduction. CUDA on the hot path: the compute
  // stream waits on the comm stream's event, the host does not
  // (docs/round-protocol.md, "Stream order").
  const double t0 = now_s();
  for (const auto& w : *inflight_) {
    if (host || !device_.is_cuda()) w->wait(std::nullopt);
    if (device_.is_cuda()) w->synchronize_stream();
  }
  return now_s() - t0;
}

at::Tensor Engine::verdict_of(int prev, int64_t fragment) {
  // On CUDA the communicator's valid flag joins the verdict: the watchdog clears
  // it before it aborts, so a half-reduced buffer is never merged, even when the
  // merge is already queued.
  std::optional<at::Tensor> valid;
  if (!inflight_->empty()) valid = inflight_->back()->valid_flag();
  if (!opts_.check_finite) return valid ? *valid : at::Tensor();
  std::vector<at::Tensor> flats;
  std::vector<int64_t> numels;
  for (const Group& g : groups_) {
    if (g.fragment != fragment) continue;  // the round carried this fragment only
    // 8 bits: a non-finite element makes its block's scale non-finite (csrc/quant.h).
    flats.push_back(g.flagged(prev));
    numels.push_back(g.flagged_numel());
  }
  reduced_verdict(flats, numels, world_, valid, info_);
  verdicts_.push(counters_.rounds - 1, info_);
  verdicts_.drain(false);  // CPU: at once; CUDA: whatever has reached the host
  return verdict_;
}

void Engine::account() {
  if (!inflight_) return;
  for (const auto& w : *inflight_) {
    const double done = w->completed_at();
    if (!std::isnan(done)) counters_.comm_seconds += done - w->issued_at();
  }
}

// Profiler labels: RECORD_FUNCTION costs a callback check when no profiler runs.
#define HPSGD_LABEL(name) RECORD_FUNCTION(name, c10::ArrayRef<const c10::IValue>{})

void Engine::run_boundary(bool final_merges) {
  // docs/round-protocol.md, "Boundary" (and "Fragments").
  HPSGD_LABEL("hpsgd.boundary");
  at::NoGradGuard no_grad;  // the step writes the user's parameters in place
  const double t0 = now_s();
  check_not_capturing();
  const int64_t steps = counters_.steps_in_window;
  const bool merging = inflight_.has_value();
  const double exposed = merging ? await_inflight(false) : 0.0;
  const int prev = in_flight_index(), fill = fill_;
  const int64_t issuing = fragment_of(counters_.rounds), merged = fragment_of(counters_.rounds - 1);
  const at::Tensor verdict = merging ? verdict_of(prev, merged) : at::Tensor();
  if (opts_.fragments > 1 && merging) {
    // First every merge: its scratch output lands in the buffer the new round
    // is then written to (see share_flats), never after that round was issued.
    for (Group& g : groups_)
      if (g.fragment == merged) merge_only(g, prev, fill, verdict, final_merges);
  }
  std::vector<std::shared_ptr<comm::Work>> works;
  works.reserve(groups_.size());
  for (Group& g : groups_) {
    if (g.fragment != issuing) continue;
    // One fragment: the merge of the previous round and this round's change in one pass.
    const bool fused = merging && opts_.fragments == 1;
    round_step(g, fused ? std::optional<int>(prev) : std::nullopt, fill, defined_or_none(g.sent),
               world_, fused ? defined_or_none(verdict) : std::nullopt);
    own_flag(g.flagged(fill), g.flagged_numel(), rank_, world_, opts_.check_finite);
    // The wire carries d / N (round_step's divisor): the sum is the mean.
    {
      HPSGD_LABEL("hpsgd.all_reduce_async");
      works.push_back(g.quantized()
                          ? comm_->quantized_all_reduce(g.flats[fill], g.scales[fill], world_)
                          : comm_->all_reduce(g.flats[fill], /*average=*/false));
    }
    counters_.bytes_reduced += g.round_bytes();
  }
  account();
  inflight_ = std::move(works);
  fill_ = prev;
  counters_.steps_in_window = 0;
  counters_.rounds += 1;
  counters_.exposed_seconds += exposed;
  const double spent = now_s() - t0;
  counters_.boundary_seconds += spent;
  if (window_) window_->round_ended(spent - exposed, steps);
}

void Engine::merge_only(Group& g, int reduced, int scratch, const at::Tensor& verdict,
                        bool final_merge) {
  // docs/round-protocol.md, "Fragments": round_step with the reduced round and a
  // scratch output. "keep" passes `sent`, so the replica keeps what it has not
  // sent (p = a + d), then nothing of this fragment is in flight (s = 0); a
  // final merge, and "reset", leave the replica equal to the global model.
  const bool keep = g.sent.defined() && !final_merge;
  round_step(g, reduced, scratch, keep ? std::optional<at::Tensor>(g.sent) : std::nullopt, world_,
             defined_or_none(verdict));
  if (g.sent.defined()) g.sent.zero_();
}

int64_t Engine::agree_on_rounds() {
  HPSGD_CHECK(control_, "HPSGD: synchronize() needs a control process group; this engine has none");
  std::vector<at::Tensor> issued{at::full({1}, counters_.rounds, at::kLong)};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp(c10d::ReduceOp::MAX);
  o.timeout = std::chrono::milliseconds(static_cast<int64_t>(opts_.timeout_s * 1000.0));
  try {
    control_->allreduce(issued, o)->wait();
  } catch (const std::exception& e) {
    raise_control_error("synchronize(): agreeing on the number of rounds", rank_, world_,
                        opts_.timeout_s, e.what());
  }
  return issued[0].item<int64_t>();
}

void Engine::synchronize() {
  // docs/round-protocol.md, "synchronize()".
  HPSGD_LABEL("hpsgd.synchronize");
  at::NoGradGuard no_grad;
  check_usable();
  const int64_t target = agree_on_rounds();
  while (counters_.rounds < target) {  // one round behind: close it as a catch-up
    counters_.catch_up_rounds += 1;
    run_boundary();
  }
  // The final rounds, in lock step on every rank: one per fragment, so every
  // fragment sends what it has not sent; from the second on, each merges the
  // final round of the fragment before it (docs/round-protocol.md, "Fragments").
  for (int64_t j = 0; j < opts_.fragments; ++j) run_boundary(/*final_merges=*/j > 0);
  counters_.exposed_seconds += await_inflight(true);
  account();
  const int last = in_flight_index(), scratch = fill_;
  const int64_t fragment = pending_fragment();
  const at::Tensor verdict = verdict_of(last, fragment);
  verdicts_.drain(true);
  for (Group& g : groups_) {
    if (g.fragment != fragment) continue;
    // No `sent`: the replica becomes the global model.
    round_step(g, last, scratch, std::nullopt, world_, defined_or_none(verdict));
    if (g.sent.defined()) g.sent.zero_();
  }
  inflight_.reset();
  counters_.steps_in_window = 0;
  verdicts_.forget_discard();  // the next round carries real changes
  counters_.synchronizations += 1;
  in_sync_ = true;
  if (window_) window_->restart();
}

void Engine::quiesce() {
  check_usable();
  if (inflight_) {
    await_inflight(/*host=*/true);
#ifdef HPSGD_WITH_CUDA  // and what the compute stream queued after it (the verdict's copy)
    if (device_.is_cuda()) c10::cuda::getCurrentCUDAStream(device_.index()).synchronize();
#endif
  }
  verdicts_.drain(true);
}

void Engine::close() {
  inflight_.reset();
  comm_.reset();
  control_.reset();
}

void Engine::replace_live(size_t group, size_t index, const at::Tensor& t) {
  HPSGD_CHECK_ARG(group < groups_.size() && index < groups_[group].live.size(),
                  "Engine.replace_live: no tensor ", index, " in group ", group);
  const at::Tensor& old = groups_[group].live[index];
  HPSGD_CHECK_ARG(t.defined() && t.sizes() == old.sizes() && t.dtype() == old.dtype() &&
                      t.device() == old.device() && t.is_contiguous(),
                  "Engine.replace_live: the new tensor must have the old one's shape, dtype and device");
  groups_[group].live[index] = t;
}

std::vector<at::Tensor> Engine::reduced() const {
  std::vector<at::Tensor> out;
  for (const Group& g : groups_) out.push_back(g.flats[in_flight_index()]);
  return out;
}

std::vector<at::Tensor> Engine::reduced_scales() const {
  std::vector<at::Tensor> out;
  for (const Group& g : groups_) out.push_back(g.scales[in_flight_index()]);
  return out;
}

void Engine::restore(const Counters& c, const VerdictCounts& v, bool pending, bool in_sync) {
  counters_ = c;
  verdicts_.load(v);
  if (pending) {
    inflight_.emplace();  // completed: nothing to wait for
  } else {
    inflight_.reset();
  }
  in_sync_ = in_sync;
  due_ = false;
  if (window_) window_->restart();
}

}  // namespace hpsgd::engine
