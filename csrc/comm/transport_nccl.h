#pragma once

#ifdef HPSGD_WITH_NCCL
#include <nccl.h>

#include <memory>
#include <mutex>
#include <string>

#include "cuda_raii.h"
#include "transport.h"

namespace hpsgd::comm {

// Its own ncclComm_t (non-blocking, so every call can time out and be aborted)
// and its own high-priority stream. Issue: record an event on the caller's
// stream, make the comm stream wait on it, all-reduce with ncclAvg, record the
// done event; the caching allocator is told the buffer is in use on the comm
// stream, so freeing it from Python while in flight is safe.
class NcclTransport final : public Transport {
 public:
  NcclTransport(const std::string& unique_id, int rank, int world, int device, double timeout_s,
                std::shared_ptr<LinkModel> link);
  ~NcclTransport() override;
  std::string name() const override { return "nccl"; }

  // Throws with NCCL's message if the communicator hit an asynchronous error.
  void check_async_error();
  int device() const { return device_; }

  static std::string unique_id();

 protected:
  std::shared_ptr<Work> issue(const at::Tensor& flat, int64_t seq, std::shared_ptr<Work> previous,
                              double issued_at, double hold_until, double deadline) override;
  void abort_transport() override;
  void check_buffer(const at::Tensor& flat) const override;

 private:
  // Non-blocking NCCL calls return ncclInProgress; poll until done or deadline.
  void wait_ready(const char* what, double deadline);

  const int device_;
  std::mutex comm_mu_;  // every NCCL call on comm_ is serialised
  ncclComm_t comm_ = nullptr;
  std::unique_ptr<CudaStream> stream_;
  at::Tensor stamp_;  // device clock at the start of the current collective (link emulation)
  std::unique_ptr<MappedFlag> cancel_holds_;  // raised on teardown: held links end at once
};

}  // namespace hpsgd::comm
#endif
