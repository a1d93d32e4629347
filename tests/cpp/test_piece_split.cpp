// The CUDA kernel's work split (NOTE: [piece split] in csrc/chunking.h),
// checked on the host: every element of a piece is visited exactly once, every
// unit starts where all streams are aligned, and a tensor is sent down the
// misaligned path exactly when no common aligned element exists. The kernel
// calls these same functions, so this holds for it without a GPU.
#include "chunking.h"

#include <cstdio>
#include <random>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what, long a = 0, long b = 0, long c = 0) {
  if (ok) return;
  if (++failures <= 20) std::printf("FAIL: %s (%ld, %ld, %ld)\n", what, a, b, c);
}

// Every element of [lo, hi) visited once: the edges (one per thread) and the
// whole units (thread u, u + threads, ...), as the kernel walks them.
void check_split(int64_t head, int64_t lo, int64_t hi, int64_t unit, int threads) {
  const hpsgd::PieceSplit sp = hpsgd::split_piece(head, lo, hi, unit);
  std::vector<int> seen(static_cast<size_t>(hi - lo), 0);
  for (int tid = 0; tid < threads; ++tid) {
    const int64_t e = hpsgd::edge_element(sp, lo, hi, tid, threads);
    if (e >= 0) {
      expect(e >= lo && e < hi && (e < sp.vs || e >= sp.ve), "edge element outside the edges",
             head, lo, hi);
      if (e >= lo && e < hi) ++seen[static_cast<size_t>(e - lo)];
    }
    for (int64_t u = tid; u < sp.units; u += threads) {
      const int64_t first = sp.vs + u * unit;
      expect((first - head) % unit == 0, "unit not aligned at the head", head, lo, first);
      for (int64_t k = 0; k < unit; ++k)
        if (first + k >= lo && first + k < hi) ++seen[static_cast<size_t>(first + k - lo)];
        else expect(false, "unit outside the piece", head, lo, hi);
    }
  }
  expect(sp.vs - lo < unit && hi - sp.ve < unit && sp.vs <= sp.ve, "edges of unit size or more",
         head, lo, hi);
  for (size_t i = 0; i < seen.size(); ++i)
    expect(seen[i] == 1, "element not visited exactly once", head, lo + static_cast<int64_t>(i),
           seen[i]);
}

void check_unit_head(std::mt19937_64& rng) {
  const int64_t unit = 4;
  const int64_t sizes[] = {2, 4};
  for (int trial = 0; trial < 20000; ++trial) {
    const int streams = 1 + static_cast<int>(rng() % 6);
    uintptr_t addr[6];
    int64_t elem[6];
    for (int k = 0; k < streams; ++k) {
      elem[k] = sizes[rng() % 2];
      // Element-aligned mostly; a stray byte offset now and then.
      addr[k] = 4096 * (1 + rng() % 64) + elem[k] * (rng() % 64) + (rng() % 16 == 0 ? 1 : 0);
    }
    const hpsgd::UnitHead h = hpsgd::unit_head(addr, elem, streams, unit);
    bool exists = false;
    int64_t found = -1;
    for (int64_t c = 0; c < unit && !exists; ++c) {
      bool all = addr[0] % static_cast<uintptr_t>(elem[0]) == 0;
      for (int k = 0; k < streams; ++k)
        all = all && (addr[k] + c * elem[k]) % static_cast<uintptr_t>(unit * elem[k]) == 0;
      if (all) exists = true, found = c;
    }
    expect(h.ok == exists, "unit_head disagrees with a search", trial, h.ok, exists);
    if (h.ok && exists) expect(h.head == found, "unit_head found another head", trial, h.head, found);
  }
}

}  // namespace

int main() {
  for (int threads : {8, 256})
    for (int64_t head = 0; head < 4; ++head)
      for (int64_t lo = 0; lo < 40; ++lo)
        for (int64_t hi = lo + 1; hi <= lo + 80; ++hi) check_split(head, lo, hi, 4, threads);
  // Large offsets: the same arithmetic far past 2^31 elements.
  const int64_t big = (int64_t{1} << 33) + 3;
  for (int64_t head = 0; head < 4; ++head) check_split(head, big, big + 1029, 4, 256);
  std::mt19937_64 rng(0);
  check_unit_head(rng);
  std::printf("%s: piece split (%d failures)\n", failures ? "FAIL" : "ok  ", failures);
  return failures ? 1 : 0;
}
