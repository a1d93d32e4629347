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

#include <cstring>

#include "../checks.h"
#include "../quant_sum_ops.h"
#include "clock.h"
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

// Reports a completion or an error to waiters.
void finish(Completion& c, const std::string& error) {
  {
    std::lock_guard<std::mutex> lock(c.mu);
    c.done = error.empty();
    c.error = error;
  }
  c.cv.notify_all();
}

class C10dWork final : public Work {
 public:
  C10dWork(const std::shared_ptr<Transport>& t, at::Tensor flat, int64_t seq,
           std::shared_ptr<Work> prev, double issued, double hold, double deadline,
           c10::intrusive_ptr<c10d::Work> work, std::shared_ptr<Completion> c,
           const char* what = "all_reduce", int64_t bytes = -1)
      : Work(t, std::move(flat), seq, std::move(prev), issued, hold, deadline, what, bytes),
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

void C10dTransport::check_buffer(const at::Tensor& flat, const char* what) const {
  HPSGD_CHECK_ARG(flat.device().is_cpu() || (flat.is_cuda() && (backend_ == "nccl" || backend_ == "gloo")),
                  what, " is on ", flat.device(), " but the c10d transport over ",
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
  await_previous_phases(deadline);
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
        finish(*completion, error);
      });
  return std::make_shared<C10dWork>(shared_from_this(), flat, seq, std::move(previous), issued_at,
                                    hold_until, deadline, std::move(work), std::move(completion));
}

// NOTE: [c10d phases]
// The 8-bit reduction is two collectives on the group (docs/round-protocol.md,
// "8-bit wires"): an all-to-all of packed bytes (per destination: its shard's
// codes, their scales, this rank's extra slots), then, from that one's
// completion callback on the group's thread, the owner's sum on the host
// (quantized_shard_sum_cpu) and an all-to-all of the owners' shards (Gloo has
// no ragged all-gather). The caller never waits for phase 1; the Work completes
// with phase 2. A group pairs collectives by issue order, so nothing may be
// issued on it between the two phases: the next issue on this transport waits
// (within its own deadline) until phase 2 was handed to the group. Collectives
// the user issues directly on the same group meanwhile would break that order.
struct PhaseGate {
  std::mutex mu;
  std::condition_variable cv;
  int state = 0;  // 0: phase 2 not issued yet, 1: issued, 2: will never be
  std::string error;
  void open(int to, const std::string& why = "") {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (state != 0) return;
      state = to;
      error = why;
    }
    cv.notify_all();
  }
};

void C10dTransport::await_previous_phases(double deadline) {
  if (!gate_) return;
  {
    std::unique_lock<std::mutex> lock(gate_->mu);
    while (gate_->state == 0) {
      if (aborted()) throw CommFailure("the communicator was aborted");
      const double left = deadline - now_s();
      if (left <= 0)
        throw CommTimeout("the previous quantized_all_reduce's all-to-all did not complete within "
                          "this collective's deadline, so its all-gather (which must precede this "
                          "one on every rank) was never issued");
      gate_->cv.wait_for(lock, std::chrono::duration<double>(std::min(left, 0.05)));
    }
    if (gate_->state == 2)
      throw CommFailure("the previous quantized_all_reduce failed before its all-gather: " +
                        gate_->error);
  }
  gate_.reset();
}

std::shared_ptr<Work> C10dTransport::issue_quantized(const QuantizedPlan& q, int64_t seq,
                                                     std::shared_ptr<Work> previous,
                                                     double issued_at, double hold_until,
                                                     double deadline) {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  {
    std::lock_guard<std::mutex> lock(pg_mu_);
    pg = pg_;
  }
  HPSGD_CHECK(pg, "the communicator is closed");
  await_previous_phases(deadline);
  const int64_t W = world(), me = rank();
  auto completion = std::make_shared<Completion>();
  auto make_work = [&](c10::intrusive_ptr<c10d::Work> w) {
    return std::make_shared<C10dWork>(shared_from_this(), q.codes, seq, std::move(previous),
                                      issued_at, hold_until, deadline, std::move(w), completion,
                                      "quantized_all_reduce", q.bytes_sent(me));
  };
  const int64_t recv_each = q.scatter_bytes(me);
  if (recv_each == 0 && q.nb == 0) {  // nothing to move on any rank (n = 0, extra = 0)
    completion->done = true;
    return make_work({});
  }
  // Phase 1's send buffer on the buffers' device (a copy: the inputs are not
  // read once issued).
  const at::Tensor codes8 = q.codes.view(at::kByte), scales8 = q.scales.view(at::kByte);
  std::vector<at::Tensor> pieces;
  std::vector<int64_t> send_splits, recv_splits(W, recv_each);
  for (int64_t d = 0; d < W; ++d) {
    pieces.push_back(codes8.narrow(0, q.elem_lo(d), q.elems(d)));
    pieces.push_back(scales8.narrow(0, 4 * q.block_lo(d), 4 * q.blocks(d)));
    pieces.push_back(scales8.narrow(0, 4 * q.nb, 4 * q.extra));
    send_splits.push_back(q.scatter_bytes(d));
  }
  at::Tensor send = at::cat(pieces);
  at::Tensor recv = at::empty({W * recv_each}, send.options());
  c10d::AllToAllOptions opts;
  opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout() * 1000.0));
  auto work1 = pg->all_to_all_single(recv, send, recv_splits, send_splits, opts);
  std::shared_ptr<PhaseGate> gate;
  if (q.nb > 0) gate_ = gate = std::make_shared<PhaseGate>();
  std::shared_ptr<CommState> state = this->state();
  work1->getFuture()->addCallback([q, recv, completion, gate, pg, state, W, me, recv_each,
                                   deadline](c10::ivalue::Future& fut) {
    auto fail = [&](const std::string& why) {
      if (gate) gate->open(2, why);
      finish(*completion, why);
    };
    if (fut.hasError()) return fail(fut.tryRetrieveErrorMessage());
    try {
      const at::Tensor host = recv.cpu();  // on CUDA: after Gloo's copy back (NOTE: [c10d on CUDA])
      const uint8_t* in = host.data_ptr<uint8_t>();
      const int64_t m = q.elems(me), k = q.blocks(me);
      // Every rank's extra slots, summed here by every rank: no third collective.
      std::vector<float> extra(q.extra, 0.f);
      at::Tensor codes = at::empty({W * m}, at::kByte), scales = at::empty({W * k}, at::kFloat);
      for (int64_t s = 0; s < W; ++s) {
        const uint8_t* from = in + s * recv_each;
        std::memcpy(codes.data_ptr<uint8_t>() + s * m, from, m);
        std::memcpy(scales.data_ptr<float>() + s * k, from + m, 4 * k);
        for (int64_t j = 0; j < q.extra; ++j) {
          float v;
          std::memcpy(&v, from + m + 4 * (k + j), 4);
          extra[j] = quant::add_rn(extra[j], v);  // rank order
        }
      }
      // The owner's shard, re-quantised, packed as the all-gather sends it.
      at::Tensor shard = at::empty({m + 4 * k}, at::kByte);
      at::Tensor shard_scales = at::empty({k}, at::kFloat);
      quantized_shard_sum_cpu({codes.data_ptr(), scales.data_ptr<float>(), W, m, k,
                               shard.data_ptr(), shard_scales.data_ptr<float>(), q.fp8,
                               at::Device(at::kCPU)});
      std::memcpy(shard.data_ptr<uint8_t>() + m, shard_scales.data_ptr(), 4 * k);
      // Writes the result (and the extra sums) into the caller's buffers.
      auto land = [q, extra](const uint8_t* gathered) {
        at::Tensor codes_h = q.codes.is_cuda() ? at::empty({q.n}, at::kByte) : q.codes.view(at::kByte);
        at::Tensor scales_h = q.scales.is_cuda() ? at::empty({q.nb + q.extra}, at::kFloat) : q.scales;
        for (int64_t r = 0; gathered && r < q.world; ++r) {
          std::memcpy(codes_h.data_ptr<uint8_t>() + q.elem_lo(r), gathered, q.elems(r));
          std::memcpy(scales_h.data_ptr<float>() + q.block_lo(r), gathered + q.elems(r),
                      4 * q.blocks(r));
          gathered += q.gather_bytes(r);
        }
        if (q.extra) std::memcpy(scales_h.data_ptr<float>() + q.nb, extra.data(), 4 * q.extra);
        if (q.codes.is_cuda()) {
          q.codes.view(at::kByte).copy_(codes_h);
          q.scales.copy_(scales_h);
          device_done(q.codes);
        }
      };
      if (q.nb == 0) {  // extra slots only
        land(nullptr);
        return finish(*completion, "");
      }
      if (state->aborted()) return fail("the communicator was aborted before the all-gather");
      std::vector<int64_t> send_splits(W, q.gather_bytes(me)), recv_splits;
      for (int64_t r = 0; r < W; ++r) recv_splits.push_back(q.gather_bytes(r));
      at::Tensor send2 = shard.repeat({W});
      at::Tensor recv2 = at::empty({q.n + 4 * q.nb}, at::kByte);
      c10d::AllToAllOptions opts2;
      opts2.timeout = std::chrono::milliseconds(
          std::max<int64_t>(1, static_cast<int64_t>((deadline - now_s()) * 1000.0)));
      auto work2 = pg->all_to_all_single(recv2, send2, recv_splits, send_splits, opts2);
      gate->open(1);
      work2->getFuture()->addCallback([recv2, completion, land](c10::ivalue::Future& f2) {
        std::string error;
        if (f2.hasError()) {
          error = f2.tryRetrieveErrorMessage();
        } else {
          try {
            land(recv2.data_ptr<uint8_t>());
          } catch (const std::exception& e) {
            error = e.what();
          }
        }
        finish(*completion, error);
      });
    } catch (const std::exception& e) {
      fail(e.what());
    }
  });
  return make_work(std::move(work1));
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
