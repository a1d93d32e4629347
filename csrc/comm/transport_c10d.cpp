// The c10d transport: any torch.distributed process group, driven from C++ so
// the scheduling in Transport/Work is the same code the NCCL transport uses.
// The group's own collective runs on its worker threads; completion arrives
// through the Work's future and wakes waiters.
//
// NOTE: [c10d on CUDA]
// CUDA buffers work on any group that reduces them: Gloo copies them to host
// memory on its own stream (ordered after the caller's current stream at
// issue), reduces on the host and copies back. It is the only way two
// processes can share one GPU, which NCCL refuses. The completion callback
// (run by the group's thread, on a stream that waits for the copy back) waits
// for the device before it reports done, so "done" means what it means on CPU:
// every stream may read the result. The host therefore waits at a boundary on
// this transport by its nature (the reduction runs on the host); the NCCL
// transport is the one whose boundary never waits.
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <condition_variable>

#ifdef HPSGD_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include "../checks.h"
#include "transport_c10d.h"

namespace hpsgd::comm {
namespace {

// Written by the process group's thread, read by waiters.
struct Completion {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::string error;
};

class C10dWork final : public Work {
 public:
  C10dWork(const std::shared_ptr<Transport>& t, at::Tensor flat, int64_t seq,
           std::shared_ptr<Work> prev, double issued, double hold, double deadline,
           c10::intrusive_ptr<c10d::Work> work, std::shared_ptr<Completion> c)
      : Work(t, std::move(flat), seq, std::move(prev), issued, hold, deadline),
        work_(std::move(work)),
        completion_(std::move(c)) {}

  // The result is in place only once the group's thread saw the copy back end
  // (NOTE: [c10d on CUDA]): the host waits, within the deadline, as wait() does.
  void synchronize_stream() override {
    if (flat_.is_cuda()) wait(std::nullopt);
  }

 protected:
  bool transport_done() override {
    std::lock_guard<std::mutex> lock(completion_->mu);
    if (!completion_->error.empty()) throw std::runtime_error(completion_->error);
    return completion_->done;
  }
  void block_for(double seconds) override {
    std::unique_lock<std::mutex> lock(completion_->mu);
    completion_->cv.wait_for(lock, std::chrono::duration<double>(seconds),
                             [&] { return completion_->done || !completion_->error.empty(); });
  }

 private:
  // Keeps the group's work (and through its callback the buffer) until it ends;
  // not the process group itself (NOTE: [comm ownership] in transport.h).
  c10::intrusive_ptr<c10d::Work> work_;
  std::shared_ptr<Completion> completion_;
};

// The callback's current stream waits for the group's copy back (the future's
// events); block this (the group's) thread until it and our division are done.
void device_done(const at::Tensor& flat) {
#ifdef HPSGD_WITH_CUDA
  c10::cuda::getCurrentCUDAStream(flat.device().index()).synchronize();
#else
  TORCH_CHECK(false, "a CUDA buffer in a build without CUDA");
#endif
}

}  // namespace

C10dTransport::C10dTransport(c10::intrusive_ptr<c10d::ProcessGroup> pg, double timeout_s,
                             std::shared_ptr<LinkModel> link)
    : Transport("c10d:" + pg->getBackendName(), pg->getRank(), pg->getSize(), timeout_s,
                std::move(link)),
      backend_(pg->getBackendName()),
      pg_(std::move(pg)) {}

C10dTransport::~C10dTransport() { stop_watchdog(); }

void C10dTransport::check_buffer(const at::Tensor& flat) const {
  HPSGD_CHECK_ARG(flat.device().is_cpu() || (flat.is_cuda() && (backend_ == "nccl" || backend_ == "gloo")),
                  "all_reduce_async: flat is on ", flat.device(), " but the c10d transport over ",
                  backend_, " reduces CPU tensors; expected a CPU tensor (CUDA buffers need a "
                  "gloo or nccl group)");
}

std::shared_ptr<Work> C10dTransport::issue(const at::Tensor& flat, bool average, int64_t seq,
                                           std::shared_ptr<Work> previous, double issued_at,
                                           double hold_until, double deadline) {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  {
    std::lock_guard<std::mutex> lock(pg_mu_);
    pg = pg_;
  }
  HPSGD_CHECK(pg, "the communicator is closed");
  std::vector<at::Tensor> tensors{flat};
  c10d::AllreduceOptions opts;
  // Gloo has no mean: sum, then divide once the sum has landed. Sum mode (the
  // caller pre-divided) is a plain sum with no division pass.
  const bool native_avg = average && backend_ == "nccl";
  const bool divide = average && !native_avg && world() > 1;
  opts.reduceOp = native_avg ? c10d::ReduceOp(c10d::ReduceOp::AVG)
                             : c10d::ReduceOp(c10d::ReduceOp::SUM);
  // The group's own deadline matches ours, so its threads are freed too.
  opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout() * 1000.0));
  auto work = pg->allreduce(tensors, opts);
  auto completion = std::make_shared<Completion>();
  const double world = static_cast<double>(this->world());
  work->getFuture()->addCallback(
      [completion, flat, world, divide](c10::ivalue::Future& fut) {
        std::string error;
        if (fut.hasError()) {
          error = fut.tryRetrieveErrorMessage();
        } else {
          try {
            if (divide) flat.div_(world);
            if (flat.is_cuda()) device_done(flat);  // NOTE: [c10d on CUDA]
          } catch (const std::exception& e) {
            error = e.what();
          }
        }
        {
          std::lock_guard<std::mutex> lock(completion->mu);
          completion->done = error.empty();
          completion->error = error;
        }
        completion->cv.notify_all();
      });
  return std::make_shared<C10dWork>(shared_from_this(), flat, seq, std::move(previous), issued_at,
                                    hold_until, deadline, std::move(work), std::move(completion));
}

void C10dTransport::abort_transport() {
  // The process group is the user's: it is not ours to abort. Collectives
  // already handed to it end at its own timeout (set to ours above); later
  // ones are refused by Transport::check_usable, and no Work waits on them.
}

void C10dTransport::close_transport() {
  // Drop our reference to the group; the group's in-flight work keeps what it
  // needs (the buffer, through the completion callback) until it ends.
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  std::lock_guard<std::mutex> lock(pg_mu_);
  pg.swap(pg_);
}

}  // namespace hpsgd::comm
