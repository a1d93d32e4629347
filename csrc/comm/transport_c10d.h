#pragma once

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "transport.h"

namespace hpsgd::comm {

struct PhaseGate;

class C10dTransport final : public Transport {
 public:
  // Make one with make_transport<C10dTransport>(pg, timeout_s[, link]).
  C10dTransport(c10::intrusive_ptr<c10d::ProcessGroup> pg, double timeout_s,
                std::shared_ptr<LinkModel> link = nullptr);
  ~C10dTransport() override;

 protected:
  std::shared_ptr<Work> issue(const at::Tensor& flat, bool average, int64_t seq,
                              std::shared_ptr<Work> previous, double issued_at, double hold_until,
                              double deadline) override;
  std::shared_ptr<Work> issue_quantized(const QuantizedPlan& plan, int64_t seq,
                                        std::shared_ptr<Work> previous, double issued_at,
                                        double hold_until, double deadline) override;
  void abort_transport() override;
  void close_transport() override;
  void check_buffer(const at::Tensor& flat, const char* what) const override;

 private:
  // NOTE: [c10d phases]: every issue first waits (until its own deadline) for
  // the previous 8-bit reduction's all-gather to be handed to the group.
  void await_previous_phases(double deadline);
  std::shared_ptr<PhaseGate> gate_;  // under Transport's issue lock
  const std::string backend_;
  std::mutex pg_mu_;  // guards pg_ (released by close)
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
};

}  // namespace hpsgd::comm
