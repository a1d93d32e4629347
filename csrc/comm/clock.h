#pragma once

#include <chrono>

namespace hpsgd::comm {

// Seconds on a monotonic clock; every deadline and timestamp in comm uses it.
inline double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace hpsgd::comm
