// The 8-bit wire's codec, shared by every kernel that quantises or dequantises
// (the fused round step, the communicator's shard reduction) on both devices,
// so a code means the same thing everywhere. The rule is written once in
// docs/round-protocol.md, "8-bit wires"; hpsgd_ext/reference.py
// (quantize_blocks) is its plain-PyTorch oracle, bit for bit.
//
// NOTE: [8-bit codec]
// One float32 scale per block of kBlock consecutive elements of the flat index
// space (a block may span several tensors): scale = absmax / qmax, code =
// x / scale rounded to nearest even (int8 clamped to +-qmax), value = code *
// scale. An all-zero block has scale 0 and codes 0. The absmax propagates NaN,
// so a non-finite element makes its block's scale non-finite; such a block's
// codes are 0 (never a NaN code), and its values are NaN: the verdict, which
// reads the scales, refuses the round. The codec's products and sums are
// rounded once each (no fused multiply-add), so a given float32 block gets the
// same scale and codes on the CPU, on CUDA and in torch. (The rule before it may
// contract on CUDA, where nvcc fuses by default: the change itself can differ by
// one rounding there, and the tests allow one code step for it.)
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Float8_e4m3fn.h>

#include <cmath>
#include <cstdint>

namespace hpsgd::quant {

constexpr int64_t kBlock = 512;  // elements per scale

C10_HOST_DEVICE inline int64_t num_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

// The running absmax: NaN wins over everything, +inf over every finite value.
C10_HOST_DEVICE inline float absmax_join(float m, float x) {
  const float ax = ::fabsf(x);
  return (ax > m || ax != ax) ? ax : m;
}

// x * y and x + y rounded once each: nvcc would otherwise contract a product
// feeding a sum into one fused operation (the host build forbids it for every
// file: -ffp-contract=off in setup.py).
C10_HOST_DEVICE inline float mul_rn(float x, float y) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(x, y);
#else
  return x * y;
#endif
}
C10_HOST_DEVICE inline float add_rn(float x, float y) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(x, y);
#else
  return x + y;
#endif
}

template <typename C>
struct Codec;

template <>
struct Codec<int8_t> {
  static constexpr float kMax = 127.f;
  C10_HOST_DEVICE static int8_t encode(float v) {  // clamped, as float8's
    const float r = ::rintf(v);  // nearest even in the default rounding mode
    return static_cast<int8_t>(r > kMax ? kMax : (r < -kMax ? -kMax : r));
  }
  C10_HOST_DEVICE static float decode(int8_t c) { return static_cast<float>(c); }
};

template <>
struct Codec<c10::Float8_e4m3fn> {
  static constexpr float kMax = 448.f;
  // Clamped: a subnormal scale (absmax near 1e-42) rounds, so v can exceed kMax, and
  // a conversion that does not saturate would give a NaN code under a finite scale.
  C10_HOST_DEVICE static c10::Float8_e4m3fn encode(float v) {
    return c10::Float8_e4m3fn(::fminf(::fmaxf(v, -kMax), kMax));
  }
  C10_HOST_DEVICE static float decode(c10::Float8_e4m3fn c) { return static_cast<float>(c); }
};

// The scale of a block whose absmax is `m`.
template <typename C>
C10_HOST_DEVICE inline float scale_of(float m) {
  return m / Codec<C>::kMax;
}

C10_HOST_DEVICE inline bool finite(float x) { return x - x == 0.f; }

template <typename C>
C10_HOST_DEVICE inline C encode(float x, float scale) {
  if (!finite(scale)) return Codec<C>::encode(0.f);
  return Codec<C>::encode(x / (scale == 0.f ? 1.f : scale));
}

template <typename C>
C10_HOST_DEVICE inline float decode(C code, float scale) {
  return mul_rn(Codec<C>::decode(code), scale);
}

}  // namespace hpsgd::quant
