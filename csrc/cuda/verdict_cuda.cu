// CUDA runner of the verdict's ops (docs/round-protocol.md, "Verdict kernels").
// Both ops are an OR over a scan: a block that sees a non-finite element writes
// a fixed value into the result, so every writer writes the same value and the
// result does not depend on the order of the blocks (deterministic, no atomics,
// no scratch memory, nothing read back by the host). What must be written
// before the scan (zeroed flag slots, the verdict's start value) is written by
// the launch before it on the same stream:
//   own_flag:        cudaMemsetAsync(slots) + scan     (the memset only, unchecked)
//   reduced_verdict: init (flags, info[0] = valid) + scan, per kMaxSpans flats
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <string>

#include "../checks.h"
#include "../verdict_ops.h"
#include "kernel_info.cuh"

namespace hpsgd {
namespace cuda {
namespace {

constexpr int kScanThreads = 256;
// Flats per launch, passed by value (kernel parameters; 24 bytes each). The
// engine has one flat per tensor group: more than this is unusual, and costs
// one more pair of launches per kMaxSpans.
constexpr int kMaxSpans = 32;
// Loads of 16 bytes each thread has in flight per iteration.
constexpr int kUnroll = 4;

struct Spans {
  WireSpan s[kMaxSpans];
  int n;
};

__device__ __forceinline__ bool full(uint32_t bits, uint32_t exp) { return (bits & exp) == exp; }

// Whether a 16-byte word holds a non-finite element of format w.
__device__ __forceinline__ bool word_nonfinite(const uint4& u, Wire w) {
  const uint32_t exp = exponent_bits(w);
  const uint32_t x[4] = {u.x, u.y, u.z, u.w};
  bool bad = false;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (wire_bytes(w) == 4) bad |= full(x[k], exp);
    else bad |= full(x[k] & 0xffffu, exp) | full(x[k] >> 16, exp);
  }
  return bad;
}

__device__ __forceinline__ uint32_t load_bits(const char* base, int64_t i, int bytes) {
  return bytes == 4 ? reinterpret_cast<const uint32_t*>(base)[i]
                    : reinterpret_cast<const uint16_t*>(base)[i];
}

// This thread's share (thread t of `stride`) of the data of one flat: the
// elements before its first 16-byte boundary and after its last one one by
// one, the rest as 16-byte words, kUnroll loads issued before the first test.
__device__ __forceinline__ bool span_nonfinite(const WireSpan s, int64_t t, int64_t stride) {
  const int bytes = wire_bytes(s.wire);
  const uint32_t exp = exponent_bits(s.wire);
  const char* base = static_cast<const char*>(s.data);
  const int64_t per_word = 16 / bytes;
  const int64_t head =
      min(s.numel, static_cast<int64_t>((16 - reinterpret_cast<uintptr_t>(base) % 16) % 16) / bytes);
  const int64_t words = (s.numel - head) / per_word;
  const int64_t tail = head + words * per_word;
  bool bad = false;
  if (t < head) bad |= full(load_bits(base, t, bytes), exp);
  if (tail + t < s.numel) bad |= full(load_bits(base, tail + t, bytes), exp);
  const uint4* w = reinterpret_cast<const uint4*>(base + head * bytes);
#pragma unroll 1
  for (int64_t i = t; i < words; i += kUnroll * stride) {
    uint4 u[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (i + k * stride < words) u[k] = w[i + k * stride];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (i + k * stride < words) bad |= word_nonfinite(u[k], s.wire);
  }
  return bad;
}

// What a block that found a non-finite element writes.
struct OwnFlagSink {  // 1 in this rank's slot, zeroed by the memset before
  void* slot;
  Wire wire;
  __device__ void bad() const {
    if (wire_bytes(wire) == 4) *static_cast<uint32_t*>(slot) = one_bits(wire);
    else *static_cast<uint16_t*>(slot) = static_cast<uint16_t>(one_bits(wire));
  }
};
struct VerdictSink {  // info[0] = 0 * valid, as the CPU's (0 or 1) * valid
  float* info;
  const float* valid;
  __device__ void bad() const { info[0] = 0.f * (valid ? *valid : 1.f); }
};

template <class Sink>
__global__ void __launch_bounds__(kScanThreads) scan_kernel(Spans spans, Sink sink) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kScanThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kScanThreads;
  bool bad = false;
  for (int k = 0; k < spans.n; ++k) bad |= span_nonfinite(spans.s[k], t, stride);
  if (__syncthreads_or(bad) && threadIdx.x == 0) sink.bad();
}

// One block: info[1 + r] = any flat's slot r non-zero (OR-ed into the earlier
// launches' answer unless `first`), and info[0] = valid (1 without one) before
// any scan may clear it.
__global__ void __launch_bounds__(kScanThreads)
    verdict_init_kernel(Spans spans, int64_t world, float* info, const float* valid, bool first) {
  for (int64_t r = threadIdx.x; r < world; r += kScanThreads) {
    bool flagged = !first && info[1 + r] != 0.f;
    for (int k = 0; k < spans.n; ++k) {
      const WireSpan s = spans.s[k];
      const uint32_t bits =
          load_bits(static_cast<const char*>(s.data), s.numel + r, wire_bytes(s.wire));
      flagged |= (bits & magnitude_bits(s.wire)) != 0;
    }
    info[1 + r] = flagged ? 1.f : 0.f;
  }
  if (first && threadIdx.x == 0) info[0] = 1.f * (valid ? *valid : 1.f);
}

// Enough blocks for a few words per thread, at most a few waves.
int64_t scan_grid(int64_t elements) {
  static const int64_t cap = int64_t{8} * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t per_block = int64_t{kScanThreads} * kUnroll * 4;  // 16-bit: 4 words of 8
  return std::clamp<int64_t>((elements + per_block - 1) / per_block, 1, cap);
}

template <class Sink>
void scan(const Spans& spans, int64_t elements, const Sink& sink, cudaStream_t stream) {
  if (elements == 0) return;
  scan_kernel<Sink><<<static_cast<unsigned>(scan_grid(elements)), kScanThreads, 0, stream>>>(spans, sink);
  HPSGD_LAUNCH_CHECK();
}

void own_flag_cuda(const OwnFlagCall& c) {
  c10::cuda::CUDAGuard guard(c.device);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(c.device.index());
  const int bytes = wire_bytes(c.wire);
  char* slots = static_cast<char*>(c.flat) + c.numel * bytes;
  HPSGD_CUDA_CHECK(cudaMemsetAsync(slots, 0, c.world * bytes, stream));  // +0 in every format
  if (!c.check) return;
  Spans spans{};
  spans.s[0] = {c.flat, c.numel, c.wire};
  spans.n = 1;
  scan(spans, c.numel, OwnFlagSink{slots + c.rank * bytes, c.wire}, stream);
}

void reduced_verdict_cuda(const VerdictCall& c) {
  c10::cuda::CUDAGuard guard(c.device);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(c.device.index());
  const int64_t n = static_cast<int64_t>(c.flats.size());
  for (int64_t first = 0; first == 0 || first < n; first += kMaxSpans) {
    Spans spans{};
    int64_t elements = 0;
    for (int64_t i = first; i < std::min(n, first + kMaxSpans); ++i) {
      spans.s[spans.n++] = c.flats[i];
      elements += c.flats[i].numel;
    }
    verdict_init_kernel<<<1, kScanThreads, 0, stream>>>(spans, c.world, c.info, c.valid, first == 0);
    HPSGD_LAUNCH_CHECK();
    scan(spans, elements, VerdictSink{c.info, c.valid}, stream);
  }
}

}  // namespace

std::vector<KernelInfo> verdict_kernels() {
  return {kernel_info("verdict.scan[own_flag]", scan_kernel<OwnFlagSink>, kScanThreads),
          kernel_info("verdict.scan[reduced]", scan_kernel<VerdictSink>, kScanThreads),
          kernel_info("verdict.init[reduced]", verdict_init_kernel, kScanThreads)};
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(hpsgd, CUDA, m) {
  VerdictOps<&cuda::own_flag_cuda, &cuda::reduced_verdict_cuda>::register_all(m);
}

}  // namespace hpsgd
