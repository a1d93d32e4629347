// One launch over any number of tensors. Per-tensor metadata lives in device
// memory (uploaded from pinned memory on the current stream), so there is no
// kernel-argument size limit and no relaunch for thousands of tensors. Sizes
// and offsets are int64 throughout; empty tensors own no chunk.
//
// Work is cut into chunks of kChunk elements; block b takes chunks b,
// b+grid, ... and finds each chunk's tensor by binary search over the
// per-tensor chunk prefix. Inside a chunk an Op handles groups of kVec
// elements with 16-byte accesses when every stream of that tensor is aligned
// after `head` elements, and single elements everywhere else. Each thread
// first calls op.begin() on its own copy of the Op: device-side state (such
// as a verdict written by an earlier kernel) is read there, never by the host.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <array>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "../chunking.h"

namespace hpsgd {
namespace cuda {

constexpr int kMaxLists = 3;
constexpr int kVec = 8;            // elements per vector group: 16 bytes of a 16-bit type
constexpr int64_t kChunk = 8192;   // multiple of kVec
constexpr int kThreads = 256;
constexpr int kBlocksPerSM = 8;

struct TensorMeta {
  void* list[kMaxLists];  // this tensor in each list stream (null when absent)
  int64_t numel;
  int64_t offset;       // index of element 0 in the flat streams
  int64_t first_chunk;  // chunks [first_chunk, next tensor's first_chunk)
  int32_t head;         // elements before the first aligned vector group
  int32_t vec_ok;       // all streams 16-byte aligned at head (mod kVec)
};

// What the host knows about a call: per-tensor list pointers and the flat
// streams' base pointers, with element sizes (0 = stream absent).
struct MultiTensorLayout {
  std::vector<std::array<void*, kMaxLists>> lists;
  std::array<int64_t, kMaxLists> list_elem{};
  std::vector<int64_t> numels, offsets;
  std::vector<const void*> flats;  // flat streams present in this call
  int64_t flat_elem = 0;
};

template <class Op>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_kernel(const TensorMeta* __restrict__ metas, int64_t n, int64_t n_chunks, Op op) {
  op.begin();  // per-thread state read on the device (e.g. a verdict), once per launch
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const int64_t t = owner_of_chunk(c, n, [&](int64_t i) { return metas[i].first_chunk; });
    const TensorMeta& m = metas[t];
    const int64_t lo = (c - m.first_chunk) * kChunk;
    const int64_t hi = min(m.numel, lo + kChunk);
    // lo is a multiple of kVec, so this chunk's first group starts at lo + head.
    const int64_t vs = m.vec_ok ? min(hi, lo + m.head) : hi;
    const int64_t groups = (hi - vs) / kVec;
    const int64_t ve = vs + groups * kVec;
    for (int64_t i = lo + threadIdx.x; i < vs; i += blockDim.x) op.scalar(m, i);
    for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) op.vector(m, vs + g * kVec);
    for (int64_t i = ve + threadIdx.x; i < hi; i += blockDim.x) op.scalar(m, i);
  }
}

inline bool aligned16(uintptr_t addr) { return addr % 16 == 0; }

// Builds the metadata, uploads it and launches once on the current stream.
template <class Op>
void multi_tensor_apply(const MultiTensorLayout& layout, const at::Device& device, const Op& op) {
  const int64_t n = static_cast<int64_t>(layout.numels.size());
  const std::vector<int64_t> first = chunk_prefix(layout.numels, kChunk);
  const int64_t n_chunks = first.back();
  if (n_chunks == 0) return;

  at::Tensor host = at::empty({static_cast<int64_t>(n * sizeof(TensorMeta))},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* metas = reinterpret_cast<TensorMeta*>(host.data_ptr());
  for (int64_t i = 0; i < n; ++i) {
    TensorMeta& m = metas[i];
    std::memset(&m, 0, sizeof(m));
    m.numel = layout.numels[i];
    m.offset = layout.offsets[i];
    m.first_chunk = first[i];
    // The head brings the flat streams to a 16-byte boundary; every other
    // stream must then be aligned too, or this tensor takes the scalar path.
    const auto flat0 = reinterpret_cast<uintptr_t>(layout.flats.at(0)) + m.offset * layout.flat_elem;
    bool ok = flat0 % layout.flat_elem == 0;
    const int64_t head = ok ? static_cast<int64_t>((16 - flat0 % 16) % 16) / layout.flat_elem : 0;
    for (const void* f : layout.flats)
      ok = ok && aligned16(reinterpret_cast<uintptr_t>(f) + (m.offset + head) * layout.flat_elem);
    for (int k = 0; k < kMaxLists; ++k) {
      m.list[k] = layout.lists[i][k];
      if (m.list[k])
        ok = ok && aligned16(reinterpret_cast<uintptr_t>(m.list[k]) + head * layout.list_elem[k]);
    }
    m.head = static_cast<int32_t>(head);
    m.vec_ok = ok ? 1 : 0;
  }

  c10::cuda::CUDAGuard guard(device);
  // non_blocking from pinned memory: the caching host allocator keeps `host`
  // alive until the copy has run; `dev` is stream-ordered with the kernel.
  at::Tensor dev = host.to(device, /*non_blocking=*/true);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t grid = std::min<int64_t>(n_chunks, static_cast<int64_t>(sms) * kBlocksPerSM);
  multi_tensor_kernel<Op><<<static_cast<unsigned>(grid), kThreads, 0,
                            at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const TensorMeta*>(dev.data_ptr()), n, n_chunks, op);
  HPSGD_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace hpsgd
