// Owning wrappers for the CUDA objects the NCCL transport creates itself.
#pragma once

#ifdef HPSGD_WITH_CUDA
#include <cuda_runtime_api.h>

#include "../checks.h"

namespace hpsgd::comm {

class CudaStream {
 public:
  // The highest priority the device offers: the reduction should not queue
  // behind bulk compute kernels for SM time.
  explicit CudaStream(int device) : device_(device) {
    int least = 0, greatest = 0;
    HPSGD_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    HPSGD_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
  }
  ~CudaStream() {
    if (stream_) cudaStreamDestroy(stream_);  // never throws from a destructor
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
};

class CudaEvent {
 public:
  explicit CudaEvent(bool timing) {
    HPSGD_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault
                                                              : cudaEventDisableTiming));
  }
  ~CudaEvent() {
    if (event_) cudaEventDestroy(event_);
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  void record(cudaStream_t s) { HPSGD_CUDA_CHECK(cudaEventRecord(event_, s)); }
  // Non-blocking: true when done; throws on a device error.
  bool query() const {
    const cudaError_t e = cudaEventQuery(event_);
    if (e == cudaErrorNotReady) {
      (void)cudaGetLastError();  // not an error: clear it
      return false;
    }
    HPSGD_CUDA_CHECK(e);
    return true;
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// A flag in pinned host memory that kernels can read while they run: the host
// raises it, a polling kernel sees it within one poll, with no stream sync.
class MappedFlag {
 public:
  MappedFlag() {
    void* host = nullptr;
    void* dev = nullptr;
    HPSGD_CUDA_CHECK(cudaHostAlloc(&host, sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable));
    host_ = static_cast<volatile int*>(host);
    *host_ = 0;
    const cudaError_t e = cudaHostGetDevicePointer(&dev, host, 0);
    if (e != cudaSuccess) cudaFreeHost(host);  // the destructor will not run
    HPSGD_CUDA_CHECK(e);
    dev_ = static_cast<volatile int*>(dev);
  }
  ~MappedFlag() {
    if (host_) cudaFreeHost(const_cast<int*>(host_));
  }
  MappedFlag(const MappedFlag&) = delete;
  MappedFlag& operator=(const MappedFlag&) = delete;
  void raise() { *host_ = 1; }
  const volatile int* device_ptr() const { return dev_; }

 private:
  volatile int* host_ = nullptr;
  volatile int* dev_ = nullptr;
};

}  // namespace hpsgd::comm
#endif
