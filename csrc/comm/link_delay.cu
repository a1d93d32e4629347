#include "../checks.h"
#include "link_delay.h"

namespace hpsgd::comm {
namespace {

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void link_stamp_kernel(uint64_t* stamp) { *stamp = global_ns(); }

__global__ void link_hold_kernel(const uint64_t* stamp, uint64_t ns, const volatile int* cancel) {
  const uint64_t until = *stamp + ns;
  while (global_ns() < until && *cancel == 0) __nanosleep(2000);
}

}  // namespace

void launch_link_stamp(cudaStream_t stream, uint64_t* stamp) {
  link_stamp_kernel<<<1, 1, 0, stream>>>(stamp);
  HPSGD_LAUNCH_CHECK();
}

void launch_link_hold(cudaStream_t stream, const uint64_t* stamp, uint64_t ns,
                      const volatile int* cancel) {
  link_hold_kernel<<<1, 1, 0, stream>>>(stamp, ns, cancel);
  HPSGD_LAUNCH_CHECK();
}

}  // namespace hpsgd::comm
