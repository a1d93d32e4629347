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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

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

// Block loops for the host (the CPU kernels): the same codes and values as
// encode/decode element by element, written so that the compiler vectorises
// them. float8's conversion element by element is libm's fminf/fmaxf (calls)
// and c10's scalar, branching rounding (7x the time of a float32 wire on the
// fused step); here it is the same clamp and rounding in integer operations
// (e4m3fn_bits), and the decode the same conversion as bit operations
// (e4m3fn_value).
// tests/cpp/test_codec.cpp checks e4m3fn_bits against the element-by-element
// encode on every float, e4m3fn_value against c10 on every code, and the
// blocks against encode/decode.

// c ? x : y by masks: the vectoriser takes a conditional between two
// computed values as control flow and gives up on the loop.
inline uint32_t select_bits(bool c, uint32_t x, uint32_t y) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return (x & m) | (y & ~m);
}

// Codec<Float8_e4m3fn>::encode(v)'s bits for every float v but a signaling
// NaN (never an input here: it is a quotient): c10's rounding of v clamped to
// +-448 (a quiet NaN to -448, as fmaxf gives), without branches, so that a
// loop of it vectorises.
inline uint32_t e4m3fn_bits(float v) {  // the code in the low 8 bits
  uint32_t b;
  std::memcpy(&b, &v, 4);
  const uint32_t sign = b & 0x80000000u;
  uint32_t a = b ^ sign;
  constexpr uint32_t kInf = 0x7F800000u, kMaxBits = 0x43E00000u;  // 448.0f
  const bool nan = a > kInf;
  a = a > kMaxBits ? kMaxBits : a;
  // Below 2^-6 (subnormal codes, steps of 2^-9): |v| + 2^14 has an ulp of
  // 2^-9, so the float addition rounds |v| to the code, nearest even, and the
  // sum's low bits are it (c10's own trick; a variable shift and a rounding
  // compare in integers cost the vector loop a third more and spilled).
  float sum;
  std::memcpy(&sum, &a, 4);
  sum += 16384.f;
  uint32_t sub;
  std::memcpy(&sub, &sum, 4);
  sub -= 141u << 23;
  // Normal: rebias the exponent and round the mantissa to 3 bits, nearest even.
  const uint32_t normal = (a + (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu + ((a >> 20) & 1u)) >> 20;
  const uint32_t r = select_bits(a < (121u << 23), sub, normal) | (sign >> 24);
  return select_bits(nan, 0xFEu, r);  // NaN: -448
}

// The absmax of a block as absmax_join folds it: the largest |x| (+0 for an
// empty or all-zero block, +inf over finite values), NaN if any element is
// NaN. On the bits: a non-negative float orders as its bits do, and every NaN's
// bits (sign cleared) exceed +inf's, so an unsigned max of |x|'s bits is the
// fold, and an integer max reduction vectorises (the float fold, a compare and
// a branch per element, was most of the 8-bit step's time). Which NaN comes
// out is not specified: only that one does (the scale then refuses the round).
inline float absmax_block(const float* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t k = 0; k < n; ++k) {
    uint32_t b;
    std::memcpy(&b, x + k, 4);
    b &= 0x7FFFFFFFu;
    m = b > m ? b : m;
  }
  float f;
  std::memcpy(&f, &m, 4);
  return f;
}

template <typename C>
inline void encode_block(const float* x, float scale, C* codes, int64_t n) {
  for (int64_t k = 0; k < n; ++k) codes[k] = encode<C>(x[k], scale);
}

template <>
inline void encode_block(const float* x, float scale, c10::Float8_e4m3fn* codes, int64_t n) {
  auto* out = reinterpret_cast<uint8_t*>(codes);
  if (!finite(scale)) {
    const uint8_t zero = Codec<c10::Float8_e4m3fn>::encode(0.f).x;
    for (int64_t k = 0; k < n; ++k) out[k] = zero;
    return;
  }
  const float d = scale == 0.f ? 1.f : scale;
  // Codes first as 32-bit lanes, then narrowed: narrowing inside the loop
  // makes the compiler work on four vectors of floats at once for one of
  // bytes, which spills (1.5x the time).
  constexpr int64_t kLanes = 64;
  alignas(32) uint32_t wide[kLanes];
  for (int64_t b = 0; b < n; b += kLanes) {
    const int64_t len = std::min(kLanes, n - b);
    for (int64_t k = 0; k < len; ++k) wide[k] = e4m3fn_bits(x[b + k] / d);
    for (int64_t k = 0; k < len; ++k) out[b + k] = static_cast<uint8_t>(wide[k]);
  }
}

template <typename C>
inline void decode_block(const C* codes, float scale, float* out, int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] = decode(codes[k], scale);
}

// c10's float8_e4m3fn -> float32 conversion, bit for bit (NaN as c10 gives
// it: 0x7FF00000 with the code's sign), restated so that a loop of it
// vectorises: a normal code is its exponent rebiased (7 -> 127) and its three
// mantissa bits moved up; a subnormal one is m * 2^-9, exact in float32. (A
// table of the 256 values is a gather per element, which the compiler emits as
// scalar loads: a fifth of the fp8 step.)
inline float e4m3fn_value(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24, a = code & 0x7Fu;
  const float sub = static_cast<float>(static_cast<int32_t>(a & 7u)) * 0x1p-9f;
  uint32_t sub_bits;
  std::memcpy(&sub_bits, &sub, 4);
  const uint32_t normal = (a << 20) + (120u << 23);
  const uint32_t r = sign | select_bits(a < 8u, sub_bits, select_bits(a == 0x7Fu, 0x7FF00000u, normal));
  float f;
  std::memcpy(&f, &r, 4);
  return f;
}

template <>
inline void decode_block(const c10::Float8_e4m3fn* codes, float scale, float* out, int64_t n) {
  const auto* bits = reinterpret_cast<const uint8_t*>(codes);
  for (int64_t k = 0; k < n; ++k) out[k] = mul_rn(e4m3fn_value(bits[k]), scale);
}

}  // namespace hpsgd::quant
