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
  NcclWork(std::shared_ptr<NcclTransport> t, at::Tensor flat, int64_t seq,
           std::shared_ptr<Work> prev, double issued, double deadline)
      : Work(t, std::move(flat), seq, std::move(prev), issued, /*hold_until=*/0.0, deadline),
        nccl_(std::move(t)) {}

  CudaEvent start{true}, end{true};

  void synchronize_stream() override {
    c10::cuda::CUDAGuard guard(nccl_->device());
    HPSGD_CUDA_CHECK(cudaStreamWaitEvent(at::cuda::getCurrentCUDAStream(nccl_->device()).stream(),
                                         end.get(), 0));
  }
  double device_seconds() override {
    if (!end.query()) return std::numeric_limits<double>::quiet_NaN();
    float ms = 0.f;
    HPSGD_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), end.get()));
    return ms / 1e3;
  }

 protected:
  bool transport_done() override {
    nccl_->check_async_error();
    return end.query();
  }
  void block_for(double seconds) override {
    // The GPU signals nothing to the CPU here: poll, briefly.
    std::this_thread::sleep_for(std::chrono::duration<double>(std::min(seconds, 50e-6)));
  }

 private:
  std::shared_ptr<NcclTransport> nccl_;
};

}  // namespace

std::string NcclTransport::unique_id() {
  ncclUniqueId id;
  HPSGD_NCCL_CHECK(ncclGetUniqueId(&id));
  return std::string(reinterpret_cast<const char*>(&id), sizeof(id));
}

NcclTransport::NcclTransport(const std::string& uid, int rank, int world, int device,
                             double timeout_s, std::shared_ptr<LinkModel> link)
    : Transport(rank, world, timeout_s, std::move(link)), device_(device) {
  HPSGD_CHECK_ARG(uid.size() == sizeof(ncclUniqueId), "Communicator: NCCL unique id has ",
                  uid.size(), " bytes; expected ", sizeof(ncclUniqueId));
  c10::cuda::CUDAGuard guard(device_);
  stream_ = std::make_unique<CudaStream>(device_);
  stamp_ = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA, device_));
  cancel_holds_ = std::make_unique<MappedFlag>();
  ncclUniqueId id;
  std::memcpy(&id, uid.data(), sizeof(id));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
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
  std::lock_guard<std::mutex> lock(comm_mu_);
  if (!comm_) return;
  // Let queued collectives drain, within the timeout; then tear down. Abort is
  // the one teardown that cannot hang on a peer that has gone away. Emulated
  // link time is not worth waiting for: nobody is left to see the result late.
  cancel_holds_->raise();
  const double deadline = now_s() + timeout();
  while (stream_ && cudaStreamQuery(stream_->get()) == cudaErrorNotReady && now_s() < deadline)
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  (void)cudaGetLastError();
  ncclCommAbort(comm_);
  comm_ = nullptr;
}

void NcclTransport::wait_ready(const char* what, double deadline) {
  // Caller holds comm_mu_.
  for (;;) {
    ncclResult_t state = ncclSuccess;
    HPSGD_NCCL_CHECK(ncclCommGetAsyncError(comm_, &state));
    if (state == ncclSuccess) return;
    if (state != ncclInProgress)
      throw CommFailure(std::string(what) + " failed on rank " + std::to_string(rank()) + ": " +
                        ncclGetErrorString(state) + " (" + ncclGetLastError(comm_) + ")");
    if (now_s() > deadline)
      throw CommTimeout(std::string(what) + " did not finish within " +
                        std::to_string(timeout()) + " s on rank " + std::to_string(rank()));
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void NcclTransport::check_async_error() {
  std::lock_guard<std::mutex> lock(comm_mu_);
  if (!comm_) throw std::runtime_error("the NCCL communicator was aborted");
  ncclResult_t state = ncclSuccess;
  HPSGD_NCCL_CHECK(ncclCommGetAsyncError(comm_, &state));
  if (state != ncclSuccess && state != ncclInProgress)
    throw std::runtime_error(std::string("NCCL asynchronous error: ") + ncclGetErrorString(state) +
                             " (" + ncclGetLastError(comm_) + ")");
}

void NcclTransport::check_buffer(const at::Tensor& flat) const {
  HPSGD_CHECK_ARG(flat.is_cuda() && flat.device().index() == device_, "all_reduce_async: flat is on ",
                  flat.device(), "; expected cuda:", device_, " (this communicator's device)");
}

std::shared_ptr<Work> NcclTransport::issue(const at::Tensor& flat, int64_t seq,
                                           std::shared_ptr<Work> previous, double issued_at,
                                           double /*hold_until: emulated on the device*/,
                                           double deadline) {
  c10::cuda::CUDAGuard guard(device_);
  auto self = std::static_pointer_cast<NcclTransport>(shared_from_this());
  auto work = std::make_shared<NcclWork>(self, flat, seq, std::move(previous), issued_at, deadline);
  const cudaStream_t comm_stream = stream_->get();
  {
    CudaEvent ready(false);  // destroying it after the wait is enqueued is fine
    ready.record(at::cuda::getCurrentCUDAStream(device_).stream());
    HPSGD_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, ready.get(), 0));
  }
  work->start.record(comm_stream);
  auto* stamp = reinterpret_cast<uint64_t*>(stamp_.data_ptr());
  if (link()) launch_link_stamp(comm_stream, stamp);
  {
    std::lock_guard<std::mutex> lock(comm_mu_);
    HPSGD_CHECK(comm_ != nullptr, "the NCCL communicator was aborted");
    // The mean over one rank is the buffer itself. In place, ncclSum then moves
    // nothing, while ncclAvg still reads and writes every byte (1 GB: 0.76 ms).
    const ncclRedOp_t mean = world() == 1 ? ncclSum : ncclAvg;
    HPSGD_NCCL_CHECK(ncclAllReduce(flat.data_ptr(), flat.data_ptr(), flat.numel(),
                                   nccl_dtype(flat.scalar_type()), mean, comm_, comm_stream),
                     "(all_reduce #", seq, ", rank ", rank(), ")");
    wait_ready("ncclAllReduce", now_s() + timeout());
  }
  if (link()) {
    const double ns = link()->duration(static_cast<double>(flat.numel() * flat.element_size())) * 1e9;
    launch_link_hold(comm_stream, stamp, static_cast<uint64_t>(std::llround(ns)),
                     cancel_holds_->device_ptr());
  }
  work->end.record(comm_stream);
  // The buffer is in use on the comm stream until `end`: the allocator must
  // not hand its memory out again before then, even if Python frees it.
  c10::cuda::CUDACachingAllocator::recordStream(
      flat.storage().data_ptr(), c10::cuda::getStreamFromExternal(comm_stream, device_));
  return work;
}

void NcclTransport::abort_transport() {
  cancel_holds_->raise();
  std::lock_guard<std::mutex> lock(comm_mu_);
  if (comm_) ncclCommAbort(comm_);
  comm_ = nullptr;
}

}  // namespace hpsgd::comm
#endif  // HPSGD_WITH_NCCL
