// Link emulation on a CUDA stream: `stamp` records the device clock when the
// stream reaches it (the collective's start on the serial link), `hold` spins
// one thread until `ns` have passed since that stamp or until `cancel` (host
// memory the kernel can read) becomes non-zero. One block, one thread: it
// occupies no more than one SM slot while it waits. A hold cannot be killed
// from the host, so a transport torn down mid-hold cancels it instead of
// leaving a kernel that every later device-wide synchronize would wait on.
#pragma once

#ifdef HPSGD_WITH_CUDA
#include <cuda_runtime_api.h>

#include <cstdint>

namespace hpsgd::comm {
void launch_link_stamp(cudaStream_t stream, uint64_t* stamp);
void launch_link_hold(cudaStream_t stream, const uint64_t* stamp, uint64_t ns,
                      const volatile int* cancel);
}  // namespace hpsgd::comm
#endif
