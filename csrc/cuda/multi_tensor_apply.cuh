// One launch over any number of tensors. Per-tensor metadata lives in device
// memory, uploaded once per cached Plan (see [plan cache] in plan.h), so there
// is no kernel-argument size limit, no relaunch for thousands of tensors and
// no per-call upload. Sizes and offsets are int64 throughout; empty tensors
// are never visited.
//
// NOTE: [block ranges] The flat index space [0, total) (the concatenation of
// all tensors, as in the flat buffers) is cut into `grid` equal ranges of
// `span` elements, one per block, and the grid is one wave of resident blocks
// (from the occupancy API). A block finds the tensor holding its first element
// once (a binary search over the offsets), then walks the tensors its range
// covers in order, holding one tensor's metadata in registers at a time; each
// intersection (a "piece") goes to the Op. No per-chunk lookup, and the work
// is balanced to within one element across blocks.
//
// NOTE: [device metadata] A Plan's metadata is written once, when the Plan is
// cached, into its own device allocation (cudaMalloc, not the caching
// allocator), through a private non-blocking stream that the host waits for:
// the copy is complete before any kernel can be launched with it, on any
// stream, and nothing else ever writes that memory. The wait costs a cache
// miss a few microseconds and waits for no other stream (no running collective,
// no queued compute). Inside a CUDA graph capture the same happens outside the
// graph (relaxed capture mode for this thread), and the Plan is kept for the
// life of the process: a replayed graph reads the same memory. Freeing (an
// evicted Plan) is cudaFree, which waits for the device: only when more buffer
// sets than the cache holds are in use.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "../checks.h"
#include "../chunking.h"
#include "../plan.h"

namespace hpsgd {
namespace cuda {

constexpr int kMaxLists = 3;
constexpr int kMaxFlats = 3;  // out, reduced, sent
// Elements per unit of the aligned path: 16 bytes of float32, 8 of a 16-bit
// type; lanes take consecutive units, so one warp access is 512 (256)
// contiguous bytes of a stream (see [piece split] in csrc/chunking.h).
constexpr int kUnit = 4;
constexpr int kThreads = 256;
// At least 4 resident blocks of 256 threads per SM: caps registers at 64 per
// thread. One unit of every stream in flight per thread (3 to 6 loads of 8-16
// bytes) keeps 24-96 KB of loads in flight per SM at 1024 threads, above what
// HBM needs (about 22 KB per SM at 4.8 TB/s and 600 ns). Groups of 8 elements
// per thread at 2 blocks per SM (up to 122 registers) ran at 66-80% of a
// device copy on an H200 (docs/kernel-notes.md, version 2); a standalone
// probe with lanes on 4-element units at 37-48 registers ran at 91%.
// tests/test_kernel_resources.py checks that no kernel spills under this cap.
constexpr int kMinBlocks = 4;

struct TensorMeta {
  void* list[kMaxLists];  // this tensor in each list stream (null when absent)
  int64_t numel;
  int64_t offset;  // index of element 0 in the flat streams
  // Both 0 for a layout without units (MultiTensorLayout::units).
  int32_t head;    // first element (mod kUnit) at which every stream is unit-aligned
  int32_t vec_ok;  // 0: the streams are misaligned relative to each other
};

// What the host knows about a call: per-tensor list pointers and the flat
// streams' base pointers, with element sizes (0 = stream absent).
struct MultiTensorLayout {
  std::vector<std::array<void*, kMaxLists>> lists;
  std::array<int64_t, kMaxLists> list_elem{};
  std::vector<int64_t> numels, offsets;
  std::vector<const void*> flats;  // flat streams present in this call (at most kMaxFlats)
  int64_t flat_elem = 0;
  // False for a kernel that walks single elements (the 8-bit step): head and
  // vec_ok are then not computed (0), and the flats may differ in element size.
  bool units = true;
};

// See [block ranges]. Op::begin() runs once per thread (device-side state such
// as a verdict written by an earlier kernel is read there, never by the host);
// Op::piece(meta, lo, hi) handles elements [lo, hi) of one tensor with the
// whole block.
template <class Op>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    multi_tensor_kernel(const TensorMeta* __restrict__ metas, int64_t n, int64_t total,
                        int64_t span, Op op) {
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * span;
  const int64_t end = min(total, begin + span);
  if (begin >= end) return;
  op.begin();
  int64_t lo_t = 0, hi_t = n;  // the last tensor whose offset <= begin
#pragma unroll 1
  while (hi_t - lo_t > 1) {
    const int64_t mid = lo_t + (hi_t - lo_t) / 2;
    if (metas[mid].offset <= begin) lo_t = mid; else hi_t = mid;
  }
#pragma unroll 1
  for (int64_t t = lo_t; t < n; ++t) {
    const TensorMeta m = metas[t];
    if (m.offset >= end) break;
    const int64_t lo = max(begin - m.offset, int64_t{0});
    const int64_t hi = min(end - m.offset, m.numel);
    if (lo < hi) op.piece(m, lo, hi);
  }
}

// The per-tensor metadata of a layout (host side, once per cached Plan).
inline std::vector<TensorMeta> tensor_metas(const MultiTensorLayout& layout) {
  const int64_t n = static_cast<int64_t>(layout.numels.size());
  std::vector<TensorMeta> metas(n);
  for (int64_t i = 0; i < n; ++i) {
    TensorMeta& m = metas[i];
    std::memset(&m, 0, sizeof(m));
    m.numel = layout.numels[i];
    m.offset = layout.offsets[i];
    for (int k = 0; k < kMaxLists; ++k) m.list[k] = layout.lists[i][k];
    if (!layout.units) continue;
    // See [piece split]: a tensor whose streams are not unit-aligned at one
    // common element takes the misaligned path (coalesced, one element per
    // access). The first flat stream sets the head.
    HPSGD_CHECK(!layout.flats.empty() && layout.flats.size() <= kMaxFlats,
                "hpsgd: a multi-tensor layout needs 1 to 3 flat streams (internal error)");
    uintptr_t addr[kMaxFlats + kMaxLists];
    int64_t elem[kMaxFlats + kMaxLists];
    int streams = 0;
    for (const void* f : layout.flats) {
      addr[streams] = reinterpret_cast<uintptr_t>(f) + m.offset * layout.flat_elem;
      elem[streams++] = layout.flat_elem;
    }
    for (int k = 0; k < kMaxLists; ++k) {
      if (m.list[k]) {
        addr[streams] = reinterpret_cast<uintptr_t>(m.list[k]);
        elem[streams++] = layout.list_elem[k];
      }
    }
    const UnitHead h = unit_head(addr, elem, streams, kUnit);
    m.head = h.ok ? static_cast<int32_t>(h.head) : 0;
    m.vec_ok = h.ok ? 1 : 0;
  }
  return metas;
}

inline bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// Device metadata and launch shape of one Plan (its `prepared`).
struct Launch {
  TensorMeta* dev = nullptr;  // see [device metadata]
  int device = 0;
  int64_t n = 0, total = 0, span = 0, grid = 0;
  Launch() = default;
  Launch(const Launch&) = delete;
  Launch& operator=(const Launch&) = delete;
  ~Launch() {
    if (!dev) return;
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    c10::cuda::CUDAStreamCaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
    (void)cudaFree(dev);  // a destructor never throws; a failure leaks the block
  }
};

// Resident blocks per SM of one kernel (occupancy API), once per instantiation.
template <class Op>
int blocks_per_sm() {
  static const int nb = [] {
    int b = 0;
    HPSGD_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &b, multi_tensor_kernel<Op>, kThreads, 0));
    return std::max(b, 1);
  }();
  return nb;
}

// The private upload stream of a device (see [device metadata]).
inline cudaStream_t upload_stream(int device) {
  static std::mutex mu;
  static std::vector<cudaStream_t> streams;
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<int>(streams.size()) <= device) streams.resize(device + 1, nullptr);
  if (!streams[device])
    HPSGD_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking));
  return streams[device];
}

// Writes the metadata to the device (see [device metadata]); no grid yet.
inline std::shared_ptr<Launch> upload_metas(const MultiTensorLayout& layout, int64_t total,
                                            const at::Device& device) {
  c10::cuda::CUDAGuard guard(device);
  c10::cuda::CUDAStreamCaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
  auto l = std::make_shared<Launch>();
  l->device = device.index();
  const std::vector<TensorMeta> metas = tensor_metas(layout);
  l->n = static_cast<int64_t>(metas.size());
  l->total = total;
  const size_t bytes = metas.size() * sizeof(TensorMeta);
  HPSGD_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&l->dev), bytes));
  const cudaStream_t up = upload_stream(device.index());
  HPSGD_CUDA_CHECK(cudaMemcpyAsync(l->dev, metas.data(), bytes, cudaMemcpyHostToDevice, up));
  HPSGD_CUDA_CHECK(cudaStreamSynchronize(up));
  return l;
}

// Writes the metadata to the device and sizes the grid: one wave of resident
// blocks (see [block ranges]), none with fewer than a few groups per thread.
template <class Op>
std::shared_ptr<const Launch> prepare_launch(const MultiTensorLayout& layout, int64_t total,
                                             const at::Device& device) {
  std::shared_ptr<Launch> l = upload_metas(layout, total, device);
  c10::cuda::CUDAGuard guard(device);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wave = static_cast<int64_t>(sms) * blocks_per_sm<Op>();
  const int64_t min_per_block = int64_t{kThreads} * kUnit * 8;
  const int64_t grid = std::clamp<int64_t>((total + min_per_block - 1) / min_per_block, 1, wave);
  const int64_t span = ((total + grid - 1) / grid + kUnit - 1) / kUnit * kUnit;
  l->span = span;
  l->grid = (total + span - 1) / span;
  return l;
}

// One launch on the current stream with a prepared Plan's metadata.
template <class Op>
void multi_tensor_apply(const Launch& l, const at::Device& device, const Op& op) {
  if (l.total == 0) return;
  c10::cuda::CUDAGuard guard(device);
  multi_tensor_kernel<Op><<<static_cast<unsigned>(l.grid), kThreads, 0,
                            at::cuda::getCurrentCUDAStream(device.index())>>>(
      l.dev, l.n, l.total, l.span, op);
  HPSGD_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace hpsgd
