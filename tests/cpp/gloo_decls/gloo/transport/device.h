#pragma once  // see tests/cpp/gloo_decls/README.md: declarations only
namespace gloo::transport {
class Device;
class UnboundBuffer;
}  // namespace gloo::transport
