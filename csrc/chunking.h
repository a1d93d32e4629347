// How the CUDA runner cuts a multi-tensor op's pieces: see [piece split] below.
// (The CPU runner splits the flat index space by elements: boundary_cpu.cpp.)
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace hpsgd {

// NOTE: [piece split] How the CUDA kernel's aligned path (csrc/cuda/
// boundary_cuda.cu) cuts one tensor's piece [lo, hi) of a block range: whole
// units of `unit` elements start where every stream is aligned (at `head` mod
// unit) and go lanes-on-consecutive-units, one unit per thread per pass; the
// fewer than `unit` elements before the first whole unit and after the last
// (the edges) go one per thread, all in one pass of a block of at least
// 2 * unit threads. Written here, host and device alike, so that a host test
// (tests/cpp/test_piece_split.cpp) checks that every element is visited once
// and every unit is aligned, without a GPU.
struct PieceSplit {
  int64_t vs;     // first element of the first whole unit
  int64_t units;  // whole units from vs
  int64_t ve;     // one past the last element of the last whole unit
};

C10_HOST_DEVICE inline PieceSplit split_piece(int64_t head, int64_t lo, int64_t hi, int64_t unit) {
  const int64_t skip = ((head - lo) % unit + unit) % unit;
  const int64_t vs = lo + skip < hi ? lo + skip : hi;
  const int64_t units = (hi - vs) / unit;
  return {vs, units, vs + units * unit};
}

// The edge element thread `tid` of `threads` handles, or -1: threads from 0
// take the head edge [lo, vs), threads from the top the tail edge [ve, hi).
C10_HOST_DEVICE inline int64_t edge_element(const PieceSplit& s, int64_t lo, int64_t hi, int tid,
                                            int threads) {
  const int64_t nhead = s.vs - lo, ntail = hi - s.ve;
  if (tid < nhead) return lo + tid;
  if (tid >= threads - ntail) return s.ve + (tid - (threads - ntail));
  return -1;
}

// Where one tensor's streams can be read a unit at a time: the first element
// (mod unit) at which the first flat stream is aligned to a whole unit
// (unit * its element size), and whether every other stream is aligned there
// too. `addr[k]` is stream k's address of the tensor's element 0 and `elem[k]`
// its element size; k = 0 is the first flat stream.
struct UnitHead {
  int64_t head;
  bool ok;
};

C10_HOST_DEVICE inline UnitHead unit_head(const uintptr_t* addr, const int64_t* elem, int streams,
                                          int64_t unit) {
  const uintptr_t a0 = addr[0];
  const int64_t e0 = elem[0];
  if (a0 % static_cast<uintptr_t>(e0) != 0) return {0, false};
  const int64_t align0 = unit * e0;
  const int64_t head = static_cast<int64_t>((align0 - a0 % align0) % align0) / e0;
  bool ok = true;
  for (int k = 0; k < streams; ++k)
    ok = ok && (addr[k] + static_cast<uintptr_t>(head * elem[k])) %
                       static_cast<uintptr_t>(unit * elem[k]) ==
                   0;
  return {head, ok};
}

}  // namespace hpsgd
