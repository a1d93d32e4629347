// Link emulation on a CUDA stream: `stamp` records the device clock when the
// stream reaches it (the collective's start on the serial link), `hold` spins
// one thread until `ns` have passed since that stamp. One block, one thread:
// it occupies no more than one SM slot while it waits.
#pragma once

#ifdef HPSGD_WITH_CUDA
#include <cuda_runtime_api.h>

#include <cstdint>

namespace hpsgd::comm {
void launch_link_stamp(cudaStream_t stream, uint64_t* stamp);
void launch_link_hold(cudaStream_t stream, const uint64_t* stamp, uint64_t ns);
}  // namespace hpsgd::comm
#endif
