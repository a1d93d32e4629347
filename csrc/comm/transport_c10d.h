#pragma once

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "transport.h"

namespace hpsgd::comm {

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
  void abort_transport() override;
  void close_transport() override;
  void check_buffer(const at::Tensor& flat) const override;

 private:
  const std::string backend_;
  std::mutex pg_mu_;  // guards pg_ (released by close)
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
};

}  // namespace hpsgd::comm
