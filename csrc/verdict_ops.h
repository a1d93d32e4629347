// The non-finite rule's two device ops, hpsgd::own_flag and
// hpsgd::reduced_verdict (docs/round-protocol.md, "Non-finite rounds" and its
// "Verdict kernels"): the checked front end both devices share, the bit tests
// their kernels share, and the registration each device's file does with its
// own runners (as boundary_ops.h does for the boundary ops).
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

namespace hpsgd {

// A wire element's format. The verdict reads bits, never converts: NaN and
// +-Inf are exactly the values whose exponent bits are all set, in each format,
// which is what isfinite() answers (see "Verdict kernels").
enum class Wire : int32_t { kF32 = 0, kBF16 = 1, kF16 = 2 };

C10_HOST_DEVICE constexpr int wire_bytes(Wire w) { return w == Wire::kF32 ? 4 : 2; }
C10_HOST_DEVICE constexpr uint32_t exponent_bits(Wire w) {
  return w == Wire::kF32 ? 0x7f800000u : (w == Wire::kBF16 ? 0x7f80u : 0x7c00u);
}
// Every bit but the sign: a slot is "non-zero" when one of these is set (-0 is zero, NaN is not).
C10_HOST_DEVICE constexpr uint32_t magnitude_bits(Wire w) {
  return w == Wire::kF32 ? 0x7fffffffu : 0x7fffu;
}
C10_HOST_DEVICE constexpr uint32_t one_bits(Wire w) {
  return w == Wire::kF32 ? 0x3f800000u : (w == Wire::kBF16 ? 0x3f80u : 0x3c00u);
}

// One flat buffer as the verdict sees it: `numel` data elements, then one flag
// slot per rank.
struct WireSpan {
  const void* data;
  int64_t numel;
  Wire wire;
};

struct OwnFlagCall {
  void* flat;
  int64_t numel, rank, world;
  bool check;
  Wire wire;
  at::Device device;
};

struct VerdictCall {
  c10::SmallVector<WireSpan, 8> flats;
  int64_t world;
  float* info;
  const float* valid;  // null: no communicator flag
  at::Device device;
};

// Validate a call (ValueError/TypeError naming the argument) before anything is written.
OwnFlagCall check_own_flag(const at::Tensor& flat, int64_t numel, int64_t rank, int64_t world,
                           bool check);
VerdictCall check_reduced_verdict(at::TensorList flats, at::IntArrayRef numels, int64_t world,
                                  const std::optional<at::Tensor>& valid, const at::Tensor& info);

template <void (*RunOwnFlag)(const OwnFlagCall&), void (*RunVerdict)(const VerdictCall&)>
struct VerdictOps {
  static void own_flag(const at::Tensor& flat, int64_t numel, int64_t rank, int64_t world,
                       bool check) {
    RunOwnFlag(check_own_flag(flat, numel, rank, world, check));
  }
  static void reduced_verdict(at::TensorList flats, at::IntArrayRef numels, int64_t world,
                              const std::optional<at::Tensor>& valid, const at::Tensor& info) {
    RunVerdict(check_reduced_verdict(flats, numels, world, valid, info));
  }
  static void register_all(torch::Library& m) {
    m.impl("own_flag", &own_flag);
    m.impl("reduced_verdict", &reduced_verdict);
  }
};

}  // namespace hpsgd
