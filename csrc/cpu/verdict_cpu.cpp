// CPU runner of the verdict's ops (docs/round-protocol.md, "Verdict kernels"):
// one pass over each flat's data, reading bits, parallel over chunks; the
// answer is an OR, so it does not depend on how the chunks are scheduled.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "../checks.h"
#include "../verdict_ops.h"

namespace hpsgd {
namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per parallel work item

// Branch-free, so the compiler vectorises it.
template <typename U>
bool any_exponent_full(const U* p, int64_t n, U exp) {
  U hit = 0;
  for (int64_t i = 0; i < n; ++i) hit |= static_cast<U>((p[i] & exp) == exp);
  return hit != 0;
}

template <typename U>
bool any_nonfinite_typed(const U* p, int64_t n, U exp) {
  // A call smaller than one chunk stays on the calling thread: waking the pool
  // would cost more than the work.
  if (n <= kChunk) return any_exponent_full(p, n, exp);
  std::atomic<bool> found{false};
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end && !found.load(std::memory_order_relaxed); ++c) {
      const int64_t lo = c * kChunk;
      if (any_exponent_full(p + lo, std::min(kChunk, n - lo), exp))
        found.store(true, std::memory_order_relaxed);
    }
  });
  return found.load();
}

bool any_nonfinite(const void* data, int64_t n, Wire w) {
  if (wire_bytes(w) == 4)
    return any_nonfinite_typed(static_cast<const uint32_t*>(data), n, exponent_bits(w));
  return any_nonfinite_typed(static_cast<const uint16_t*>(data), n,
                             static_cast<uint16_t>(exponent_bits(w)));
}

uint32_t slot_bits(const WireSpan& s, int64_t r) {
  const char* slot = static_cast<const char*>(s.data) + (s.numel + r) * wire_bytes(s.wire);
  if (wire_bytes(s.wire) == 4) {
    uint32_t u;
    std::memcpy(&u, slot, 4);
    return u;
  }
  uint16_t u;
  std::memcpy(&u, slot, 2);
  return u;
}

void own_flag_cpu(const OwnFlagCall& c) {
  const int bytes = wire_bytes(c.wire);
  char* slots = static_cast<char*>(c.flat) + c.numel * bytes;
  std::memset(slots, 0, c.world * bytes);  // +0 in every wire format
  if (!c.check || !any_nonfinite(c.flat, c.numel, c.wire)) return;
  char* own = slots + c.rank * bytes;
  if (bytes == 4) {
    const uint32_t one = one_bits(c.wire);
    std::memcpy(own, &one, 4);
  } else {
    const uint16_t one = static_cast<uint16_t>(one_bits(c.wire));
    std::memcpy(own, &one, 2);
  }
}

void reduced_verdict_cpu(const VerdictCall& c) {
  bool finite = true;
  for (const WireSpan& s : c.flats)
    if (finite && any_nonfinite(s.data, s.numel, s.wire)) finite = false;
  // As the CUDA kernels: (0 or 1) * valid, so a cleared flag (0) discards.
  const float v = c.valid ? *c.valid : 1.f;
  c.info[0] = (finite ? 1.f : 0.f) * v;
  for (int64_t r = 0; r < c.world; ++r) {
    bool flagged = false;
    for (const WireSpan& s : c.flats) flagged |= (slot_bits(s, r) & magnitude_bits(s.wire)) != 0;
    c.info[1 + r] = flagged ? 1.f : 0.f;
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(hpsgd, CPU, m) { VerdictOps<&own_flag_cpu, &reduced_verdict_cpu>::register_all(m); }

}  // namespace hpsgd
