// Owning wrappers for the CUDA objects the NCCL transport creates itself.
#pragma once

#ifdef HPSGD_WITH_CUDA
#include <cuda_runtime_api.h>

#include <mutex>
#include <utility>
#include <vector>

#include "../checks.h"

namespace hpsgd::comm {

// NOTE: [comm stream lifetime]
// A communicator's stream is never destroyed: it goes back to a process-wide
// free list (per device) for the next communicator. The buffers reduced on it
// are recorded to it in the caching allocator (recordStream), which records an
// event on the stream whenever such a buffer is freed, possibly long after the
// communicator closed; on a destroyed stream that record fails, inside a
// tensor's destructor (std::terminate). Each communicator still gets a stream
// of its own while it lives: two communicators sharing one stream would
// serialise their collectives in each rank's issue order, which can differ
// between ranks (two HPSGD instances with auto windows) and deadlock.
class CudaStream {
 public:
  // The highest priority the device offers: the reduction should not queue
  // behind bulk compute kernels for SM time.
  explicit CudaStream(int device) : device_(device) {
    {
      std::lock_guard<std::mutex> lock(free_mu());
      auto& pool = free_list();
      for (auto it = pool.begin(); it != pool.end(); ++it) {
        if (it->first == device) {
          stream_ = it->second;
          pool.erase(it);
          return;
        }
      }
    }
    int least = 0, greatest = 0;
    HPSGD_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    HPSGD_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
  }
  ~CudaStream() {
    if (!stream_) return;
    try {
      std::lock_guard<std::mutex> lock(free_mu());
      free_list().emplace_back(device_, stream_);
    } catch (...) {  // out of memory for the list: keep the stream alive, unlisted
    }
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }

 private:
  // Leaked on purpose (never destroyed at exit: the allocator may still use them).
  static std::mutex& free_mu() {
    static auto* mu = new std::mutex;
    return *mu;
  }
  static std::vector<std::pair<int, cudaStream_t>>& free_list() {
    static auto* list = new std::vector<std::pair<int, cudaStream_t>>;
    return *list;
  }

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

// A 4-byte word in pinned, mapped host memory that kernels can read while
// they run: the host writes it, a polling kernel sees it within one poll, with
// no stream sync. MappedFlag (int) cancels link holds; the float variant is a
// Work's validity flag (1 valid, 0 aborted; NOTE: [watchdog] in transport.h).
template <typename T>
class MappedValue {
  static_assert(sizeof(T) == 4, "one 4-byte word");

 public:
  explicit MappedValue(T initial = T(0)) {
    void* host = nullptr;
    void* dev = nullptr;
    HPSGD_CUDA_CHECK(cudaHostAlloc(&host, sizeof(T), cudaHostAllocMapped | cudaHostAllocPortable));
    host_ = static_cast<volatile T*>(host);
    *host_ = initial;
    const cudaError_t e = cudaHostGetDevicePointer(&dev, host, 0);
    if (e != cudaSuccess) cudaFreeHost(host);  // the destructor will not run
    HPSGD_CUDA_CHECK(e);
    dev_ = static_cast<volatile T*>(dev);
  }
  ~MappedValue() {
    if (host_) cudaFreeHost(const_cast<T*>(host_));
  }
  MappedValue(const MappedValue&) = delete;
  MappedValue& operator=(const MappedValue&) = delete;
  void set(T v) { *host_ = v; }
  T get() const { return *host_; }
  void raise() { *host_ = T(1); }
  const volatile T* device_ptr() const { return dev_; }

 private:
  volatile T* host_ = nullptr;
  volatile T* dev_ = nullptr;
};

using MappedFlag = MappedValue<int>;
using MappedFloat = MappedValue<float>;

}  // namespace hpsgd::comm
#endif
