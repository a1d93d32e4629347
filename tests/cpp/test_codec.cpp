// The 8-bit codec's host block loops (csrc/quant.h) against the element-by-
// element codec they replace on the CPU: float8_e4m3fn's branch-free clamp and
// rounding against Codec::encode (libm's clamp, c10's rounding) on every
// positive float and every 61st negative one (the sign is handled apart in
// both), the decode against c10's on all 256 codes (bits, NaN's included), and
// whole blocks, int8 and float8, on random and special inputs (zero, NaN and
// infinite scales, NaN elements, values past the clamp), the block absmax
// against absmax_join's fold among them.
#include "quant.h"

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what, double a = 0, double b = 0) {
  if (ok) return;
  if (++failures <= 20) std::printf("FAIL: %s (%g, %g)\n", what, a, b);
}

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}


template <typename C>
void check_blocks(std::mt19937& rng) {
  using namespace hpsgd::quant;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  const float scales[] = {0.f, 1.f, 3.7e-3f, 1e-42f, 2.5e3f, nan, inf, 1.f / 448, 1.f / 127};
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(kBlock), got(kBlock), want(kBlock);
  std::vector<C> codes(kBlock), ref(kBlock);
  for (int trial = 0; trial < 400; ++trial) {
    const float scale = scales[trial % 9];
    const float spread = std::ldexp(1.f, static_cast<int>(rng() % 40) - 20);
    for (auto& v : x) v = normal(rng) * spread * (std::isfinite(scale) && scale > 0 ? scale * 100 : 1);
    if (trial % 7 == 0) x[rng() % kBlock] = nan;
    if (trial % 11 == 0) x[rng() % kBlock] = -inf;
    if (trial % 13 == 0) x[rng() % kBlock] = -0.f;
    if (trial % 17 == 0) x[rng() % kBlock] = trial % 2 ? -inf : inf;
    if (trial % 19 == 0) x[rng() % kBlock] = from_bits(0xFFC00001u);  // a negative NaN, payload
    if (trial % 23 == 0) std::fill(x.begin(), x.end(), trial % 2 ? -0.f : 0.f);
    const int64_t n = trial % 5 == 0 ? static_cast<int64_t>(rng() % kBlock) : kBlock;
    float fold = 0.f;
    for (int64_t k = 0; k < n; ++k) fold = absmax_join(fold, x[k]);
    const float m = absmax_block(x.data(), n);
    expect(std::isnan(fold) ? std::isnan(m) : std::memcmp(&m, &fold, 4) == 0,
           "absmax_block differs from the absmax_join fold", m, fold);
    encode_block(x.data(), scale, codes.data(), n);
    for (int64_t k = 0; k < n; ++k) ref[k] = encode<C>(x[k], scale);
    for (int64_t k = 0; k < n; ++k)
      expect(std::memcmp(&codes[k], &ref[k], 1) == 0, "encode_block differs from encode", x[k], scale);
    decode_block(codes.data(), scale, got.data(), n);
    for (int64_t k = 0; k < n; ++k) want[k] = decode(codes[k], scale);
    for (int64_t k = 0; k < n; ++k)
      expect(std::memcmp(&got[k], &want[k], 4) == 0, "decode_block differs from decode", got[k], want[k]);
  }
}

}  // namespace

int main() {
  using namespace hpsgd::quant;
  // Every positive float (quiet NaNs and infinities included), every 61st
  // negative. Signaling NaNs are skipped: libm's fmaxf turns them into NaN
  // rather than the other operand, and a quotient is never one.
  for (uint32_t b = 0;; ++b) {
    if (b > 0x7F800000u && b < 0x7FC00000u) continue;
    const float v = from_bits(b);
    expect(e4m3fn_bits(v) == Codec<c10::Float8_e4m3fn>::encode(v).x,
           "float8 bits differ from the codec's encode", v, 0);
    if (b % 61 == 0) {
      const float w = from_bits(b | 0x80000000u);
      expect(e4m3fn_bits(w) == Codec<c10::Float8_e4m3fn>::encode(w).x,
             "float8 bits differ from the codec's encode (negative)", w, 0);
    }
    if (b == 0x7FFFFFFFu) break;
  }
  for (int c = 0; c < 256; ++c) {
    const float got = e4m3fn_value(static_cast<uint8_t>(c));
    const float want = static_cast<float>(c10::Float8_e4m3fn(static_cast<uint8_t>(c), c10::Float8_e4m3fn::from_bits()));
    expect(std::memcmp(&got, &want, 4) == 0, "float8 value differs from c10's", got, want);
  }
  std::mt19937 rng(0);
  check_blocks<int8_t>(rng);
  check_blocks<c10::Float8_e4m3fn>(rng);
  std::printf("%s: 8-bit codec blocks (%d failures)\n", failures ? "FAIL" : "ok  ", failures);
  return failures ? 1 : 0;
}
