#ifdef HPSGD_WITH_NCCL
#include "transport_nccl.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "../checks.h"
#include "../quant_sum_ops.h"
#include "clock.h"
#include "link_delay.h"

namespace hpsgd::comm {
namespace {

ncclDataType_t nccl_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    default: HPSGD_CHECK(false, "no NCCL dtype for ", t);
  }
}

class NcclWork final : public Work {
 public:
  NcclWork(const std::shared_ptr<NcclTransport>& t, at::Tensor flat, int64_t seq,
           std::shared_ptr<Work> prev, double issued, double deadline,
           const char* what = "all_reduce", int64_t bytes = -1)
      : Work(t, std::move(flat), seq, std::move(prev), issued, /*hold_until=*/0.0, deadline, what,
             bytes),
        nccl_(t),
        valid_(t->valid()),
        device_(t->device()) {}

  CudaEvent start{true}, end{true};

  void synchronize_stream() override {
    c10::cuda::CUDAGuard guard(device_);
    HPSGD_CUDA_CHECK(
        cudaStreamWaitEvent(at::cuda::getCurrentCUDAStream(device_).stream(), end.get(), 0));
  }
  double device_seconds() override {
    if (!end.query()) return std::numeric_limits<double>::quiet_NaN();
    float ms = 0.f;
    HPSGD_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), end.get()));
    return ms / 1e3;
  }
  // NOTE: [watchdog]: the transport's validity word, viewed as a device tensor;
  // the view keeps the mapped memory alive after the transport is gone.
  std::optional<at::Tensor> valid_flag() const override {
    auto keep = valid_;
    void* ptr = const_cast<float*>(valid_->device_ptr());
    return at::for_blob(ptr, {1})
        .deleter([keep](void*) {})
        .options(at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, device_))
        .target_device(at::Device(at::kCUDA, device_))
        .make_tensor();
  }

 protected:
  bool transport_done() override {
    if (auto t = nccl_.lock()) t->check_async_error();
    return end.query();
  }
  void block_for(double seconds) override {
    // The GPU signals nothing to the CPU here: poll, briefly.
    std::this_thread::sleep_for(std::chrono::duration<double>(std::min(seconds, 50e-6)));
  }

 private:
  const std::weak_ptr<NcclTransport> nccl_;  // NOTE: [comm ownership] in transport.h
  const std::shared_ptr<MappedFloat> valid_;
  const int device_;
};

// Bounds of a clean close: drain what is in flight, then finalize.
constexpr double kCloseDrain = 1.0;
constexpr double kCloseFinalize = 2.0;

}  // namespace

std::string NcclTransport::unique_id() {
  ncclUniqueId id;
  HPSGD_NCCL_CHECK(ncclGetUniqueId(&id));
  return std::string(reinterpret_cast<const char*>(&id), sizeof(id));
}

NcclTransport::NcclTransport(const std::string& uid, int rank, int world, int device,
                             double timeout_s, std::shared_ptr<LinkModel> link,
                             NcclOptions options)
    : Transport("nccl", rank, world, timeout_s, std::move(link)), device_(device) {
  HPSGD_CHECK_ARG(uid.size() == sizeof(ncclUniqueId), "Communicator: NCCL unique id has ",
                  uid.size(), " bytes; expected ", sizeof(ncclUniqueId));
  HPSGD_CHECK_ARG(options.min_ctas >= 0, "Communicator: min_ctas is ", options.min_ctas,
                  "; expected an int >= 1 or None");
  HPSGD_CHECK_ARG(options.max_ctas >= 0, "Communicator: max_ctas is ", options.max_ctas,
                  "; expected an int >= 1 or None");
  HPSGD_CHECK_ARG(options.min_ctas == 0 || options.max_ctas == 0 ||
                      options.min_ctas <= options.max_ctas,
                  "Communicator: min_ctas (", options.min_ctas, ") exceeds max_ctas (",
                  options.max_ctas, ")");
  c10::cuda::CUDAGuard guard(device_);
  stream_ = std::make_unique<CudaStream>(device_);
  stamp_ = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA, device_));
  cancel_holds_ = std::make_shared<MappedFlag>(0);
  valid_ = std::make_shared<MappedFloat>(1.0f);
  ncclUniqueId id;
  std::memcpy(&id, uid.data(), sizeof(id));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  if (options.min_ctas > 0) config.minCTAs = options.min_ctas;
  if (options.max_ctas > 0) config.maxCTAs = options.max_ctas;
  std::lock_guard<std::mutex> lock(comm_mu_);
  HPSGD_NCCL_CHECK(ncclCommInitRankConfig(&comm_, world, id, rank, &config),
                   "(rank ", rank, " of ", world, ")");
  try {
    wait_ready("ncclCommInitRankConfig", now_s() + timeout_s);
  } catch (...) {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    throw;
  }
}

NcclTransport::~NcclTransport() {
  stop_watchdog();
  teardown();
}

void NcclTransport::close_transport() { teardown(); }

void NcclTransport::teardown() {
  {
    std::lock_guard<std::mutex> lock(comm_mu_);
    if (!comm_) return;
  }
  c10::cuda::CUDAGuard guard(device_);
  // Emulated link time is not worth waiting for: nobody is left to see the
  // result late.
  cancel_holds_->raise();
  if (!aborted()) {  // once aborted, nothing is drained (NOTE: [watchdog])
    // Drain briefly: collectives whose peers are there end in moments; one
    // whose peer never issues must not hold close() hostage.
    bool idle = false;
    const double drain_until = now_s() + std::min(kCloseDrain, timeout());
    while (!aborted()) {
      const cudaError_t e = cudaStreamQuery(stream_->get());
      if (e != cudaErrorNotReady) {
        idle = e == cudaSuccess;
        break;
      }
      if (now_s() > drain_until) break;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    (void)cudaGetLastError();
    std::unique_lock<std::mutex> lock(comm_mu_);
    if (!comm_) return;
    if (idle && !aborted()) {
      // A clean close: flush and free the communicator without touching peers.
      bool finalized = false;
      if (ncclCommFinalize(comm_) != ncclInternalError) {
        const double until = now_s() + std::min(kCloseFinalize, timeout());
        for (;;) {
          ncclResult_t state = ncclInProgress;
          if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
          if (state == ncclSuccess) {
            finalized = true;
            break;
          }
          if (state != ncclInProgress || aborted() || now_s() > until) break;
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
      }
      if (finalized) {
        ncclCommDestroy(comm_);
        comm_ = nullptr;
        return;
      }
    }
    lock.unlock();
    // Not clean: what was in flight is void, and says so.
    state()->record(ErrorKind::kFailure,
                    "the communicator on rank " + std::to_string(rank()) +
                        " was closed with collectives in flight (or its finalize did not "
                        "finish in time); they were aborted");
  }
  valid_->set(0.0f);  // before the abort, as in abort_transport
  std::lock_guard<std::mutex> lock(comm_mu_);
  if (comm_) ncclCommAbort(comm_);
  comm_ = nullptr;
}

void NcclTransport::wait_ready(const char* what, double deadline) {
  // Caller holds comm_mu_; an abort from another thread waits for one poll.
  // NOTE: [nonblocking enqueue] A nonblocking communicator (so that init and
  // every call stay bounded and abortable) launches each collective from a
  // thread that NCCL starts per call: ncclAllReduce returns ncclInProgress and
  // the issue waits here for the launch. That takes tens of microseconds; a
  // sleep between polls would round it up to the OS timer (about 100 us per
  // poll, several polls: 630 us per boundary on the H200, run 7), so the first
  // kSpinSeconds only yield the core.
  constexpr double kSpinSeconds = 2e-3;
  const double spin_until = now_s() + kSpinSeconds;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    HPSGD_NCCL_CHECK(ncclCommGetAsyncError(comm_, &state));
    if (state == ncclSuccess) return;
    if (state != ncclInProgress)
      throw CommFailure(std::string(what) + " failed on rank " + std::to_string(rank()) + ": " +
                        ncclGetErrorString(state) + " (" + ncclGetLastError(comm_) + ")");
    if (aborted())
      throw CommFailure(std::string(what) + " on rank " + std::to_string(rank()) +
                        " was interrupted: the communicator was aborted");
    if (now_s() > deadline)
      throw CommTimeout(std::string(what) + " did not finish within " +
                        std::to_string(timeout()) + " s on rank " + std::to_string(rank()));
    if (now_s() < spin_until) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void NcclTransport::check_async_error() {
  // Never waits: if another thread is inside an NCCL call (it polls the same
  // error itself), skip this poll.
  std::unique_lock<std::mutex> lock(comm_mu_, std::try_to_lock);
  if (!lock.owns_lock() || !comm_) return;  // busy, or torn down (aborts are recorded)
  ncclResult_t state = ncclSuccess;
  HPSGD_NCCL_CHECK(ncclCommGetAsyncError(comm_, &state));
  if (state != ncclSuccess && state != ncclInProgress)
    throw std::runtime_error(std::string("NCCL asynchronous error: ") + ncclGetErrorString(state) +
                             " (" + ncclGetLastError(comm_) + ")");
}

void NcclTransport::check_buffer(const at::Tensor& flat, const char* what) const {
  HPSGD_CHECK_ARG(flat.is_cuda() && flat.device().index() == device_, what, " is on ",
                  flat.device(), "; expected cuda:", device_, " (this communicator's device)");
}

void NcclTransport::begin_on_stream(CudaEvent& start) {
  const cudaStream_t comm_stream = stream_->get();
  {
    CudaEvent ready(false);  // destroying it after the wait is enqueued is fine
    ready.record(at::cuda::getCurrentCUDAStream(device_).stream());
    HPSGD_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, ready.get(), 0));
  }
  start.record(comm_stream);
  if (link()) launch_link_stamp(comm_stream, reinterpret_cast<uint64_t*>(stamp_.data_ptr()));
}

void NcclTransport::end_on_stream(CudaEvent& end, int64_t bytes,
                                  std::initializer_list<at::Tensor> buffers) {
  const cudaStream_t comm_stream = stream_->get();
  if (link()) {
    const double ns = link()->duration(static_cast<double>(bytes)) * 1e9;
    launch_link_hold(comm_stream, reinterpret_cast<uint64_t*>(stamp_.data_ptr()),
                     static_cast<uint64_t>(std::llround(ns)), cancel_holds_->device_ptr());
  }
  end.record(comm_stream);
  // The buffers are in use on the comm stream until `end`: the allocator must
  // not hand their memory out again before then, even if Python frees them. The
  // stream outlives the transport for this (NOTE: [comm stream lifetime]).
  for (const at::Tensor& t : buffers)
    c10::cuda::CUDACachingAllocator::recordStream(
        t.storage().data_ptr(), c10::cuda::getStreamFromExternal(comm_stream, device_));
}

std::shared_ptr<Work> NcclTransport::issue(const at::Tensor& flat, bool average, int64_t seq,
                                           std::shared_ptr<Work> previous, double issued_at,
                                           double /*hold_until: emulated on the device*/,
                                           double deadline) {
  c10::cuda::CUDAGuard guard(device_);
  auto self = std::static_pointer_cast<NcclTransport>(shared_from_this());
  auto work = std::make_shared<NcclWork>(self, flat, seq, std::move(previous), issued_at, deadline);
  const cudaStream_t comm_stream = stream_->get();
  begin_on_stream(work->start);
  {
    std::lock_guard<std::mutex> lock(comm_mu_);
    HPSGD_CHECK(comm_ != nullptr, "the NCCL communicator was closed or aborted");
    // The mean over one rank is the buffer itself. In place, ncclSum then moves
    // nothing, while ncclAvg still reads and writes every byte (1 GB: 0.76 ms).
    // Sum mode: the caller pre-divided, a plain sum.
    const ncclRedOp_t op = (!average || world() == 1) ? ncclSum : ncclAvg;
    HPSGD_NCCL_CHECK(ncclAllReduce(flat.data_ptr(), flat.data_ptr(), flat.numel(),
                                   nccl_dtype(flat.scalar_type()), op, comm_, comm_stream),
                     "(all_reduce #", seq, ", rank ", rank(), ")");
    wait_ready("ncclAllReduce", now_s() + timeout());
  }
  end_on_stream(work->end, flat.numel() * flat.element_size(), {flat});
  return work;
}

// The 8-bit reduction on the comm stream (docs/round-protocol.md, "8-bit
// wires"): grouped sends/receives (the reduce-scatter, with every rank's extra
// slots), the shard sum and the extra sum as kernels, grouped sends/receives
// again (the all-gather, in place); the host never waits. Zero-length pieces
// are skipped on both sides alike: every rank knows every size.
std::shared_ptr<Work> NcclTransport::issue_quantized(const QuantizedPlan& q, int64_t seq,
                                                     std::shared_ptr<Work> previous,
                                                     double issued_at, double /*hold_until*/,
                                                     double deadline) {
  c10::cuda::CUDAGuard guard(device_);
  const int W = world(), me = rank();
  const int64_t bytes = q.bytes_sent(me);
  auto self = std::static_pointer_cast<NcclTransport>(shared_from_this());
  auto work = std::make_shared<NcclWork>(self, q.codes, seq, std::move(previous), issued_at,
                                         deadline, "quantized_all_reduce", bytes);
  const cudaStream_t s = stream_->get();
  const int64_t m = q.elems(me), k = q.blocks(me);
  // What every rank sends this one: codes, scales, then the extra slots.
  at::Tensor rcodes = at::empty({W * m}, q.codes.options());
  at::Tensor rscales = at::empty({W * (k + q.extra)}, q.scales.options());
  auto* codes = static_cast<uint8_t*>(q.codes.data_ptr());
  auto* scales = q.scales.data_ptr<float>();
  auto* rc = static_cast<uint8_t*>(rcodes.data_ptr());
  auto* rs = rscales.data_ptr<float>();
  float* rextra = rs + W * k;
  begin_on_stream(work->start);
  {
    std::lock_guard<std::mutex> lock(comm_mu_);
    HPSGD_CHECK(comm_ != nullptr, "the NCCL communicator was closed or aborted");
    auto send = [&](const void* p, int64_t count, ncclDataType_t t, int peer) {
      if (count > 0) HPSGD_NCCL_CHECK(ncclSend(p, count, t, peer, comm_, s), "(quantized_all_reduce #", seq, ")");
    };
    auto recv = [&](void* p, int64_t count, ncclDataType_t t, int peer) {
      if (count > 0) HPSGD_NCCL_CHECK(ncclRecv(p, count, t, peer, comm_, s), "(quantized_all_reduce #", seq, ")");
    };
    HPSGD_NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < W; ++r) {
      send(codes + q.elem_lo(r), q.elems(r), ncclUint8, r);
      send(scales + q.block_lo(r), q.blocks(r), ncclFloat32, r);
      send(scales + q.nb, q.extra, ncclFloat32, r);
      recv(rc + r * m, m, ncclUint8, r);
      recv(rs + r * k, k, ncclFloat32, r);
      recv(rextra + r * q.extra, q.extra, ncclFloat32, r);
    }
    HPSGD_NCCL_CHECK(ncclGroupEnd());
    wait_ready("the quantized reduce-scatter (ncclGroupEnd)", now_s() + timeout());
    // Into this rank's own shard of the caller's buffers: its sends above are
    // ordered before on the stream.
    hpsgd::cuda::quantized_shard_sum_on({rc, rs, W, m, k, codes + q.elem_lo(me), scales + q.block_lo(me),
                                  q.fp8, q.codes.device()},
                                 s);
    hpsgd::cuda::extra_sum_on(rextra, W, q.extra, scales + q.nb, s);
    if (q.nb > 0 && W > 1) {
      HPSGD_NCCL_CHECK(ncclGroupStart());
      for (int r = 0; r < W; ++r) {
        if (r == me) continue;
        send(codes + q.elem_lo(me), m, ncclUint8, r);
        send(scales + q.block_lo(me), k, ncclFloat32, r);
        recv(codes + q.elem_lo(r), q.elems(r), ncclUint8, r);
        recv(scales + q.block_lo(r), q.blocks(r), ncclFloat32, r);
      }
      HPSGD_NCCL_CHECK(ncclGroupEnd());
      wait_ready("the quantized all-gather (ncclGroupEnd)", now_s() + timeout());
    }
  }
  end_on_stream(work->end, bytes, {q.codes, q.scales, rcodes, rscales});
  return work;
}

void NcclTransport::abort_transport() {
  // NOTE: [watchdog]: the validity flag first (a merge kernel that reads it
  // refuses a half-reduced buffer), then the holds, then the communicator.
  valid_->set(0.0f);
  cancel_holds_->raise();
  // wait_ready and teardown poll aborted() (already set by Transport::fail),
  // so this lock is free within one poll.
  std::lock_guard<std::mutex> lock(comm_mu_);
  if (comm_) ncclCommAbort(comm_);
  comm_ = nullptr;
}

}  // namespace hpsgd::comm
#endif  // HPSGD_WITH_NCCL
