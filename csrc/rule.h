// The per-element rule of every hpsgd op, shared by the CPU and CUDA kernels so
// the two devices cannot drift apart. All math is float32; callers cast on load
// and store. `Cfg` is either a compile-time configuration (CPU: lets the
// compiler vectorise a branch-free loop) or a runtime one (CUDA: uniform
// branches, one kernel instantiation per dtype combination).
#pragma once

#include <c10/macros/Macros.h>

namespace hpsgd {

enum MomentumMode : int { kNoMomentum = 0, kMomentum = 1, kNesterov = 2 };

// Values before the update in, values after it out. Inputs of absent streams
// are never read and outputs of absent streams never written, so callers need
// not zero-fill scratch for them.
//   d   = p - a - s                              (the window's own change)
//   out = d
//   step: lr*r | m = mu*m + r; lr*m | lr*(r + mu*m)   (0 without `reduced`)
//   a   = a + step    (just `step` without an anchor stream: unflatten is exact)
//   p   = a + d if keeping own progress (sent given), else a
//   s   = d
template <class Cfg>
C10_HOST_DEVICE inline void apply_rule(const Cfg& cfg, float lr, float mu,
                                       float& p, float& a, float& m, float r,
                                       float& s, float& out) {
  const float a0 = cfg.has_anchor() ? a : 0.f;
  const float d = p - a0 - (cfg.has_sent() ? s : 0.f);
  out = d;
  float step = 0.f;
  if (cfg.has_reduced()) {
    if (cfg.momentum_mode() == kNoMomentum) {
      step = lr * r;
    } else {
      m = mu * m + r;
      step = cfg.momentum_mode() == kNesterov ? lr * (r + mu * m) : lr * m;
    }
  }
  a = cfg.has_anchor() ? a0 + step : step;
  p = cfg.has_sent() ? a + d : a;
  if (cfg.has_sent()) s = d;
}

struct RuntimeCfg {
  bool anchor, reduced, sent;
  int momentum;
  C10_HOST_DEVICE bool has_anchor() const { return anchor; }
  C10_HOST_DEVICE bool has_reduced() const { return reduced; }
  C10_HOST_DEVICE bool has_sent() const { return sent; }
  C10_HOST_DEVICE int momentum_mode() const { return momentum; }
};

template <bool A, bool R, bool S, int M>
struct StaticCfg {
  static constexpr bool has_anchor() { return A; }
  static constexpr bool has_reduced() { return R; }
  static constexpr bool has_sent() { return S; }
  static constexpr int momentum_mode() { return M; }
};

}  // namespace hpsgd
