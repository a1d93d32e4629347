#pragma once

#ifdef HPSGD_WITH_NCCL
#include <nccl.h>

#include <atomic>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>

#include "cuda_raii.h"
#include "transport.h"

namespace hpsgd::comm {

// Optional ncclConfig_t fields; 0 leaves NCCL's default (cgaClusterSize is
// never touched).
struct NcclOptions {
  int min_ctas = 0;
  int max_ctas = 0;
};

// Its own ncclComm_t (non-blocking, so every call can time out and be aborted)
// and its own high-priority stream. Issue: record an event on the caller's
// stream, make the comm stream wait on it, all-reduce with ncclAvg (ncclSum in
// sum mode), record the done event; the caching allocator is told the buffer
// is in use on the comm stream, so freeing it from Python while in flight is
// safe. Errors and deadlines: NOTE: [watchdog] in transport.h; the validity
// flag every Work exposes is cleared before ncclCommAbort.
//
// Locking: comm_mu_ serialises NCCL calls on comm_. The loops that poll NCCL
// under it (wait_ready, finalize) check the aborted flag every iteration, so
// abort() from another thread (the watchdog, the user) waits for one poll at
// most, never for a whole timeout.
class NcclTransport final : public Transport {
 public:
  NcclTransport(const std::string& unique_id, int rank, int world, int device, double timeout_s,
                std::shared_ptr<LinkModel> link, NcclOptions options = {});
  ~NcclTransport() override;

  // Throws with NCCL's message if the communicator hit an asynchronous error.
  void check_async_error();
  int device() const { return device_; }
  const std::shared_ptr<MappedFloat>& valid() const { return valid_; }

  static std::string unique_id();

 protected:
  std::shared_ptr<Work> issue(const at::Tensor& flat, bool average, int64_t seq,
                              std::shared_ptr<Work> previous, double issued_at, double hold_until,
                              double deadline) override;
  std::shared_ptr<Work> issue_quantized(const QuantizedPlan& plan, int64_t seq,
                                        std::shared_ptr<Work> previous, double issued_at,
                                        double hold_until, double deadline) override;
  void abort_transport() override;
  void close_transport() override;
  void poll_transport() override { check_async_error(); }
  void check_buffer(const at::Tensor& flat, const char* what) const override;

 private:
  // Non-blocking NCCL calls return ncclInProgress; poll until done, deadline
  // or abort. Caller holds comm_mu_.
  void wait_ready(const char* what, double deadline);
  // Clean: drain briefly, ncclCommFinalize + ncclCommDestroy; otherwise (or
  // when that does not finish in time) ncclCommAbort. Idempotent.
  void teardown();
  // The start and end of every collective on the comm stream: the caller's
  // stream first, the start event, the link's clock; then the link's hold, the
  // end event and the allocator told the buffers are in use there.
  void begin_on_stream(CudaEvent& start);
  void end_on_stream(CudaEvent& end, int64_t bytes, std::initializer_list<at::Tensor> buffers);

  const int device_;
  std::mutex comm_mu_;  // every NCCL call on comm_ is serialised
  ncclComm_t comm_ = nullptr;
  std::unique_ptr<CudaStream> stream_;
  at::Tensor stamp_;  // device clock at the start of the current collective (link emulation)
  std::shared_ptr<MappedFlag> cancel_holds_;  // raised on teardown: held links end at once
  std::shared_ptr<MappedFloat> valid_;  // 1 while healthy; 0 before any abort
};

}  // namespace hpsgd::comm
#endif
