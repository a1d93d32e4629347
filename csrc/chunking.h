// How a multi-tensor op is cut into work items, shared by the CPU and CUDA
// runners: tensor i owns chunks [first[i], first[i+1]); a work item finds its
// tensor by binary search, so no per-chunk table is built on the host.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>
#include <vector>

namespace hpsgd {

// Prefix sums of per-tensor chunk counts; back() is the total. Empty tensors
// own no chunk and are never visited.
inline std::vector<int64_t> chunk_prefix(const std::vector<int64_t>& numels, int64_t chunk) {
  std::vector<int64_t> first(numels.size() + 1, 0);
  for (size_t i = 0; i < numels.size(); ++i)
    first[i + 1] = first[i] + (numels[i] + chunk - 1) / chunk;
  return first;
}

// The tensor owning chunk c: the last i with first[i] <= c (first has n+1 entries).
template <class Get>
C10_HOST_DEVICE inline int64_t owner_of_chunk(int64_t c, int64_t n, Get first) {
  int64_t lo = 0, hi = n;  // invariant: first(lo) <= c < first(hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (first(mid) <= c) lo = mid; else hi = mid;
  }
  return lo;
}

}  // namespace hpsgd
