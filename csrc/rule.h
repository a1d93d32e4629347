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
// not zero-fill scratch for them. D is the divisor (an integer >= 1, as float).
//
// Merge (the reduced round is valid, or there is none):
//   d   = p - a - D*s                            (the window's own change; s is
//                                                 what was last put on the wire)
//   out = d / D                                  (the wire carries d pre-divided)
//   step: lr*r | m = mu*m + r; lr*m | lr*(r + mu*m)   (0 without `reduced`)
//   a   = a + step    (just `step` without an anchor stream: unflatten is exact)
//   p   = a + d if keeping own progress (sent given), else a
//   s   = d / D       (== out bit for bit: both are stored in the flat dtype)
// Discard (the verdict on the reduced round is 0 or NaN):
//   a, m untouched (the caller must not even store them back);
//   p = a; out = 0; s = 0: the round is not merged and the window in progress
//   is thrown away with it, so every rank restarts from the unchanged anchor.
//
// Why D: the all-reduce that follows is a SUM over D ranks. Dividing on the
// way out folds the mean's 1/D into this pass (no extra pass over the flat
// buffer) and keeps every partial sum within the range of the mean, so a
// representable mean cannot overflow a 16-bit wire (fp16: D ranks of 40000
// each sum to 40000, not to D*40000 = inf). With D == 1 the rule is exactly
// the plain one (1*s and d/1 are exact). s is kept in wire units, which is
// why the next round subtracts D*s.
// Why the verdict: whether the previous reduction is fit to merge (finite,
// completed) is known only on the device; reading the verdict in the kernel
// lets the device merge or discard without the host ever waiting for it.
// A divisor that is a power of two, carried with its exact reciprocal: d * 2^-k
// is d / 2^k bit for bit (both are d * 2^-k correctly rounded), and a multiply
// costs a fraction of a division in a vector loop (the CPU kernel's all-16-bit
// loops were bound by it). Any other divisor stays a division; rule_divide and
// rule_times take either form.
struct Pow2Divisor {
  float D, inverse;
};
C10_HOST_DEVICE inline float rule_divide(float d, float D) { return d / D; }
C10_HOST_DEVICE inline float rule_divide(float d, Pow2Divisor q) { return d * q.inverse; }
C10_HOST_DEVICE inline float rule_times(float D, float s) { return D * s; }
C10_HOST_DEVICE inline float rule_times(Pow2Divisor q, float s) { return q.D * s; }

template <class Cfg, class Divisor = float>
C10_HOST_DEVICE inline void apply_rule(const Cfg& cfg, float lr, float mu, Divisor D,
                                       float& p, float& a, float& m, float r,
                                       float& s, float& out) {
  const float a0 = cfg.has_anchor() ? a : 0.f;
  if (cfg.discard()) {
    out = 0.f;
    p = a0;
    if (cfg.has_sent()) s = 0.f;
    return;
  }
  const float d = p - a0 - (cfg.has_sent() ? rule_times(D, s) : 0.f);
  const float w = rule_divide(d, D);
  out = w;
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
  if (cfg.has_sent()) s = w;
}

// The verdict on a reduced round: valid (merge it) iff nonzero and not NaN.
C10_HOST_DEVICE inline bool verdict_valid(float v) { return v < 0.f || v > 0.f; }

struct RuntimeCfg {
  bool anchor, reduced, sent;
  int momentum;
  bool discard_ = false;  // known only on the device (CUDA: set per thread from the verdict)
  C10_HOST_DEVICE bool has_anchor() const { return anchor; }
  C10_HOST_DEVICE bool has_reduced() const { return reduced; }
  C10_HOST_DEVICE bool has_sent() const { return sent; }
  C10_HOST_DEVICE int momentum_mode() const { return momentum; }
  C10_HOST_DEVICE bool discard() const { return discard_; }
};

template <bool A, bool R, bool S, int M, bool Discard = false>
struct StaticCfg {
  static constexpr bool has_anchor() { return A; }
  static constexpr bool has_reduced() { return R; }
  static constexpr bool has_sent() { return S; }
  static constexpr int momentum_mode() { return M; }
  static constexpr bool discard() { return Discard; }
};

}  // namespace hpsgd
