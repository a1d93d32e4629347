#pragma once  // see tests/cpp/gloo_decls/README.md: declarations only
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);  // named by an inline c10d method
};
}  // namespace gloo
