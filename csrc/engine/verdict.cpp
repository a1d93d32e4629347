#include "verdict.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <sstream>

#ifdef HPSGD_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/core/CachingHostAllocator.h>

#include "../checks.h"
#endif

namespace hpsgd::engine {
namespace {

const char* const kAdvice =
    "a NaN/Inf gradient also poisons that rank's optimizer state (momentum, Adam moments), "
    "so every later change of that rank is non-finite too. Use a torch.amp.GradScaler (it skips "
    "non-finite steps; pass grad_scaler= to HPSGD with a fixed window) or reset that rank's "
    "optimizer state; see the README's 'Failure behaviour'";

}  // namespace

void own_flag(const at::Tensor& flat, int64_t numel, int rank, int world, bool check) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hpsgd::own_flag", "")
                       .typed<void(const at::Tensor&, int64_t, int64_t, int64_t, bool)>();
  op.call(flat, numel, rank, world, check);
}

void reduced_verdict(const std::vector<at::Tensor>& flats, const std::vector<int64_t>& numels,
                     int world, const std::optional<at::Tensor>& valid, const at::Tensor& info) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hpsgd::reduced_verdict", "")
                       .typed<void(at::TensorList, at::IntArrayRef, int64_t,
                                   const std::optional<at::Tensor>&, const at::Tensor&)>();
  op.call(flats, numels, world, valid, info);
}

VerdictPolicy::VerdictPolicy(int rank, int world, int64_t max_bad_rounds, std::string comm_dtype_name)
    : rank_(rank), world_(world), max_bad_rounds_(max_bad_rounds),
      comm_dtype_name_(std::move(comm_dtype_name)) {}

void VerdictPolicy::push(int64_t round, const at::Tensor& info) {
#ifdef HPSGD_WITH_CUDA
  if (info.is_cuda()) {
    // A free slot, or a new one: the ring grows only while more verdicts are
    // in flight than it holds (the host never waits for one to free up).
    int k = 0;
    while (k < static_cast<int>(slots_.size()) && slots_[k].busy) ++k;
    if (k == static_cast<int>(slots_.size())) {
      Slot fresh;
      fresh.host = at::empty(info.sizes(), info.options().device(at::kCPU).pinned_memory(true));
      fresh.event = std::make_shared<at::cuda::CUDAEvent>();
      slots_.push_back(std::move(fresh));
    }
    Slot& slot = slots_[k];
    TORCH_INTERNAL_ASSERT(info.is_contiguous() && info.numel() == slot.host.numel() &&
                          info.scalar_type() == at::kFloat);
    const auto stream = at::cuda::getCurrentCUDAStream(info.device().index());
    HPSGD_CUDA_CHECK(cudaMemcpyAsync(slot.host.data_ptr(), info.data_ptr(), info.nbytes(),
                                     cudaMemcpyDeviceToHost, stream.stream()));
    // The host allocator must not hand this block out again (the slot dropped
    // by load() or the destructor) before the copy has landed. It keeps the
    // streams it is told of until the block is freed and then waits for each
    // (with events, not the host): once per slot and stream is enough.
    if (slot.stream != stream.unwrap()) {
      const at::DataPtr& block = slot.host.storage().data_ptr();
      TORCH_CHECK(at::getHostAllocator(at::kCUDA)->record_event(block.get(), block.get_context(),
                                                                stream.unwrap()),
                  "HPSGD: the verdict's pinned buffer is not from the CUDA host allocator");
      slot.stream = stream.unwrap();
    }
    static_cast<at::cuda::CUDAEvent*>(slot.event.get())->record(stream);
    slot.busy = true;
    queue_.push_back({round, slot.host, k});
    return;
  }
#endif
  queue_.push_back({round, info, -1});
}

bool VerdictPolicy::ready(const Pending& p, bool block) const {
  if (p.slot < 0) return true;
#ifdef HPSGD_WITH_CUDA
  auto* event = static_cast<at::cuda::CUDAEvent*>(slots_[p.slot].event.get());
  if (event->query()) return true;
  if (block) event->synchronize();
  return block;
#else
  return true;
#endif
}

void VerdictPolicy::drain(bool block) {
  while (!queue_.empty()) {
    if (!ready(queue_.front(), block)) return;
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    // Free before apply (which may throw): nothing pushes while it reads.
    if (p.slot >= 0) slots_[p.slot].busy = false;
    apply(p.round, p.host);
  }
}

void VerdictPolicy::load(const VerdictCounts& c) {
  queue_.clear();
  // Copies still in flight keep their blocks (record_event in push); new ones
  // get new slots.
  slots_.clear();
  counts_ = c;
}

std::vector<std::string> VerdictPolicy::take_warnings() {
  std::vector<std::string> out;
  out.swap(warnings_);
  return out;
}

void VerdictPolicy::apply(int64_t round, const at::Tensor& info) {
  const float* values = info.data_ptr<float>();  // float32 [1 + world], contiguous
  const bool valid = values[0] != 0.f;
  // The round issued right after a discarded one carries zeros: its finite
  // verdict proves nothing about the replicas, so it does not end a streak.
  const bool zero_round = counts_.last_round_discarded;
  counts_.last_round_discarded = !valid;
  if (valid) {
    if (!zero_round) counts_.consecutive_bad_rounds = 0;
    return;
  }
  counts_.skipped_rounds += 1;
  counts_.consecutive_bad_rounds += 1;
  std::vector<int> ranks;
  for (int j = 0; j < world_; ++j)
    if (values[1 + j] != 0.f) ranks.push_back(j);
  std::ostringstream cause;
  if (!ranks.empty()) {
    cause << (ranks.size() == 1 ? "rank " : "ranks ");
    for (size_t i = 0; i < ranks.size(); ++i) cause << (i ? ", " : "") << ranks[i];
    cause << " sent a non-finite change (NaN/Inf)";
  } else {
    cause << "every rank's change was finite but their mean overflowed the wire dtype ("
          << comm_dtype_name_ << "); use a wider comm_dtype";
  }
  if (counts_.consecutive_bad_rounds >= max_bad_rounds_) {
    std::ostringstream msg;
    msg << "HPSGD: " << counts_.consecutive_bad_rounds
        << " consecutive rounds were not merged (max_bad_rounds=" << max_bad_rounds_
        << "); in the last one (round " << round << ") " << cause.str() << ". On rank " << rank_
        << ": " << (ranks.empty() ? "nothing was merged since" : kAdvice);
    throw NonFiniteRounds(msg.str());
  }
  warnings_.push_back("HPSGD: round " + std::to_string(round) + " was not merged: " + cause.str() +
                      "; every replica restarts from the global model");
}

}  // namespace hpsgd::engine
