// CPU runner for every hpsgd op: at::parallel_for over ranges of the flat
// index space (every tensor's elements, one tensor after the other); each
// tensor piece of a range runs one typed loop (per dtype of params, anchors and flat
// buffers, per kernel variant: see [kernel variants] in boundary_ops.h) that
// reads each stream in its own type, applies the shared rule in float32 and
// stores in the stream's type: the compiler vectorises the loop, float32 and
// bfloat16 conversions included. One pass over memory; where a float16 stream
// is present, eight elements at a time in registers (F16C).
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../boundary_ops.h"
#include "../checks.h"
#include "../quant.h"

namespace hpsgd {
namespace {

constexpr int64_t kChunk = 1 << 16;  // the fewest elements a thread is given

// float16 scratch blocks (a tensor's last 0-7 elements, or every float16
// element without F16C): converted 8 at a time where F16C is available.
void load_half(const c10::Half* s, float* dst, int64_t n) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(s[i]);
}
void store_half(const float* src, c10::Half* d, int64_t n) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) d[i] = static_cast<c10::Half>(src[i]);
}

// bfloat16 as bit operations the compiler vectorises (c10::BFloat16's scalar
// conversion does not): widen by a shift; narrow with round-to-nearest-even,
// NaN as c10's quiet 0x7FC0. Bit-identical to c10::BFloat16. The rounded
// value's bfloat16 is its high half; the NaN test and the select are masks, so
// that a loop of it vectorises.
inline uint32_t bf16_rounded(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t nan = 0u - static_cast<uint32_t>(v != v);
  return ((u + 0x7fffu + ((u >> 16) & 1u)) & ~nan) | (0x7fc00000u & nan);
}

// x + i, or null for an absent stream.
template <typename T>
T* shifted(T* x, int64_t i) {
  return x ? x + i : x;
}

// In the element loop a float32 or bfloat16 stream is read and written where it
// lives, converting per element with operations the compiler vectorises; a
// float16 stream (whose F16C conversions it does not vectorise inside a loop)
// there goes through a float32 scratch block in L1 (see TypedRule::run for the
// loops a call actually takes).
template <typename T>
using LoopT = std::conditional_t<std::is_same_v<T, c10::Half>, float, T>;

inline float to_f(float x) { return x; }
inline float to_f(c10::BFloat16 x) {
  const uint32_t u = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline void from_f(float v, float& dst) { dst = v; }
inline void from_f(float v, c10::BFloat16& dst) { dst.x = static_cast<uint16_t>(bf16_rounded(v) >> 16); }

// The momentum mode fixed at compile time too (the loop stays branch-free).
template <class C, bool Nesterov>
struct FixedMomentum : C {
  static constexpr int momentum_mode() {
    return !C::has_momentum() ? kNoMomentum : (Nesterov ? kNesterov : kMomentum);
  }
};

// One tensor's elements [lo, hi) through the rule, with every stream typed
// (P params, A anchors and momenta, F flat) and present only if Cfg says so
// (see [kernel variants] in boundary_ops.h). A discarded round reads neither
// `reduced` nor the momenta and stores neither anchors nor momenta.
template <class Cfg, typename P, typename A, typename F, class Divisor = float>
struct TypedRule {
  float lr, mu;
  Divisor D;
  static constexpr int64_t kBlock = 256;  // elements per scratch block (float16 streams)

  template <typename LP, typename LA, typename LF>
  void loop(LP* p, LA* a, LA* m, const LF* r, LF* s, LF* o, int64_t n) const {
    constexpr Cfg cfg{};
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) {
      float vp = to_f(p[i]);
      float va = Cfg::has_anchor() ? to_f(a[i]) : 0.f;
      float vm = Cfg::has_momentum() ? to_f(m[i]) : 0.f;
      const float vr = Cfg::has_reduced() && !Cfg::discard() ? to_f(r[i]) : 0.f;
      float vs = Cfg::has_sent() ? to_f(s[i]) : 0.f;
      float vo;
      apply_rule(cfg, lr, mu, D, vp, va, vm, vr, vs, vo);
      if constexpr (Cfg::has_out()) from_f(vo, o[i]);
      if constexpr (Cfg::has_sent()) from_f(vs, s[i]);
      if constexpr (Cfg::write_anchors()) from_f(va, a[i]);
      if constexpr (Cfg::write_anchors() && Cfg::has_momentum()) from_f(vm, m[i]);
      if constexpr (Cfg::write_params()) from_f(vp, p[i]);
    }
  }

  // Every stream bfloat16: two elements per 32-bit word, element 2k in the low
  // half and 2k+1 in the high half, so a word widens to two floats by a shift
  // and a mask and two rounded floats narrow back into one word by a shift, a
  // mask and an or. The element loop widens 16 lanes to 32 with a zero-extend
  // and a shift and narrows with a pack and a lane permute per vector: a third
  // more instructions, and this loop is bound by them (1.45 -> 1.08 ms at a
  // tenth of GPT-2: docs/kernel-notes.md). Same roundings, same bits.
  static float low_f(uint32_t w) { return bits_f(w << 16); }
  static float high_f(uint32_t w) { return bits_f(w & 0xFFFF0000u); }
  static float bits_f(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  }
  template <typename T>
  static uint32_t word(const T* x, int64_t k) {
    uint32_t w;
    std::memcpy(&w, x + 2 * k, sizeof(w));
    return w;
  }
  template <typename T>
  static void put(T* x, int64_t k, const float (&v)[2]) {
    const uint32_t w = (bf16_rounded(v[0]) >> 16) | (bf16_rounded(v[1]) & 0xFFFF0000u);
    std::memcpy(x + 2 * k, &w, sizeof(w));
  }

  void loop_bf16_pairs(P* p, A* a, A* m, const F* r, F* s, F* o, int64_t n) const {
    constexpr Cfg cfg{};
    constexpr bool reads_r = Cfg::has_reduced() && !Cfg::discard();
    const int64_t pairs = n / 2;
#pragma GCC ivdep
    for (int64_t k = 0; k < pairs; ++k) {
      const uint32_t wp = word(p, k), wa = Cfg::has_anchor() ? word(a, k) : 0u,
                     wm = Cfg::has_momentum() ? word(m, k) : 0u, wr = reads_r ? word(r, k) : 0u,
                     ws = Cfg::has_sent() ? word(s, k) : 0u;
      float vp[2] = {low_f(wp), high_f(wp)}, va[2] = {low_f(wa), high_f(wa)},
            vm[2] = {low_f(wm), high_f(wm)}, vs[2] = {low_f(ws), high_f(ws)}, vo[2];
      const float vr[2] = {low_f(wr), high_f(wr)};
      for (int h = 0; h < 2; ++h) apply_rule(cfg, lr, mu, D, vp[h], va[h], vm[h], vr[h], vs[h], vo[h]);
      if constexpr (Cfg::has_out()) put(o, k, vo);
      if constexpr (Cfg::has_sent()) put(s, k, vs);
      if constexpr (Cfg::write_anchors()) put(a, k, va);
      if constexpr (Cfg::write_anchors() && Cfg::has_momentum()) put(m, k, vm);
      if constexpr (Cfg::write_params()) put(p, k, vp);
    }
    if (n % 2) {
      const int64_t i = n - 1;
      loop(p + i, shifted(a, i), shifted(m, i), shifted(r, i), shifted(s, i), shifted(o, i), 1);
    }
  }

  // A stream as the loop sees it: itself, or (float16) its scratch block.
  template <typename T>
  static LoopT<T>* view(T* mem, float* scratch, int64_t n, bool read) {
    if constexpr (std::is_same_v<T, c10::Half>) {
      if (mem && read) load_half(mem, scratch, n);
      return mem ? scratch : nullptr;
    } else {
      return mem;
    }
  }
  template <typename T>
  static void finish(T* mem, const float* scratch, int64_t n, bool written) {
    if constexpr (std::is_same_v<T, c10::Half>)
      if (mem && written) store_half(scratch, mem, n);
  }

  // A float16 stream anywhere: 8 elements at a time, each stream converted into
  // 8 floats (F16C for float16, AVX2 for bfloat16) that stay in registers, the
  // rule on them, and converted back. (Through scratch blocks in L1, each
  // float16 stream cost two more passes over L1; the compiler does not
  // vectorise F16C conversions written per element, nor, in this loop,
  // bfloat16's: a float16 wire with bfloat16 params ran at 40% of copy.)
  template <typename T>
  static void load8(const T* x, float (&v)[8]) {
#ifdef __F16C__
    if constexpr (std::is_same_v<T, c10::Half>) {
      _mm256_storeu_ps(v, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x))));
      return;
    }
#endif
#ifdef __AVX2__
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
      _mm256_storeu_ps(v, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
      return;
    }
#endif
    if constexpr (!std::is_same_v<T, c10::Half>)
      for (int j = 0; j < 8; ++j) v[j] = to_f(x[j]);
  }
  template <typename T>
  static void store8(T* x, const float (&v)[8]) {
#ifdef __F16C__
    if constexpr (std::is_same_v<T, c10::Half>) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(x),
                       _mm256_cvtps_ph(_mm256_loadu_ps(v), _MM_FROUND_TO_NEAREST_INT));
      return;
    }
#endif
#ifdef __AVX2__
    if constexpr (std::is_same_v<T, c10::BFloat16>) {  // bf16_rounded, 8 at a time
      const __m256 f = _mm256_loadu_ps(v);
      const __m256i u = _mm256_castps_si256(f);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
      const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
      r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
      // 8 words to 8 halves: pack within each 128-bit lane, then the two lanes' lows together.
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(x), _mm256_castsi256_si128(packed));
      return;
    }
#endif
    if constexpr (!std::is_same_v<T, c10::Half>)
      for (int j = 0; j < 8; ++j) from_f(v[j], x[j]);
  }

  // Returns how many leading elements it did (a multiple of 8).
  int64_t loop_by8(P* p, A* a, A* m, const F* r, F* s, F* o, int64_t n) const {
    constexpr Cfg cfg{};
    constexpr bool reads_r = Cfg::has_reduced() && !Cfg::discard();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      alignas(32) float vp[8], va[8] = {}, vm[8] = {}, vr[8] = {}, vs[8] = {}, vo[8];
      load8(p + i, vp);
      if constexpr (Cfg::has_anchor()) load8(a + i, va);
      if constexpr (Cfg::has_momentum()) load8(m + i, vm);
      if constexpr (reads_r) load8(r + i, vr);
      if constexpr (Cfg::has_sent()) load8(s + i, vs);
      for (int j = 0; j < 8; ++j) apply_rule(cfg, lr, mu, D, vp[j], va[j], vm[j], vr[j], vs[j], vo[j]);
      if constexpr (Cfg::has_out()) store8(o + i, vo);
      if constexpr (Cfg::has_sent()) store8(s + i, vs);
      if constexpr (Cfg::write_anchors()) store8(a + i, va);
      if constexpr (Cfg::write_anchors() && Cfg::has_momentum()) store8(m + i, vm);
      if constexpr (Cfg::write_params()) store8(p + i, vp);
    }
    return i;
  }

  void loop_scratch(P* p, A* a, A* m, const F* r, F* s, F* o, int64_t len) const {
    // One buffer, each block a cache line further from the 4 KiB stride than the
    // last: blocks at multiples of 4 KiB apart make the core see false
    // dependences between a store to one and a load from another.
    constexpr int64_t kStride = kBlock + 16;
    alignas(64) float scratch[6 * kStride];
    float *sp = scratch, *sa = sp + kStride, *sm = sa + kStride, *sr = sm + kStride,
          *ss = sr + kStride, *so = ss + kStride;
    constexpr bool wa = Cfg::write_anchors();
    for (int64_t b = 0; b < len; b += kBlock) {
      const int64_t n = std::min(kBlock, len - b);
      auto at = [b](auto* x) { return shifted(x, b); };
      loop(view(p + b, sp, n, true), view(at(a), sa, n, true), view(at(m), sm, n, true),
           static_cast<const LoopT<F>*>(view(const_cast<F*>(at(r)), sr, n, true)),
           view(at(s), ss, n, true), view(at(o), so, n, false), n);
      finish(at(o), so, n, true);
      finish(at(s), ss, n, true);
      finish(at(a), sa, n, wa);
      finish(at(m), sm, n, wa);
      finish(p + b, sp, n, Cfg::write_params());
    }
  }

  void run(P* p, A* a, A* m, const F* r, F* s, F* o, int64_t len) const {
    constexpr bool any_half = std::is_same_v<P, c10::Half> || std::is_same_v<A, c10::Half> ||
                              std::is_same_v<F, c10::Half>;
    using Bf16 = c10::BFloat16;
    if constexpr (std::is_same_v<P, Bf16> && std::is_same_v<A, Bf16> && std::is_same_v<F, Bf16>) {
      loop_bf16_pairs(p, a, m, r, s, o, len);
    } else if constexpr (!any_half) {
      loop(p, a, m, r, s, o, len);
    } else {
#ifdef __F16C__
      const int64_t i = loop_by8(p, a, m, r, s, o, len);
#else
      const int64_t i = 0;
#endif
      if (i == len) return;
      loop_scratch(p + i, shifted(a, i), shifted(m, i), shifted(r, i), shifted(s, i), shifted(o, i), len - i);
    }
  }
};

template <typename T>
T* at_or_null(void* base, int64_t i) {
  return base ? static_cast<T*>(base) + i : nullptr;
}

// Calls f with the divisor as the rule should take it (rule.h): a power of two
// with its exact reciprocal, any other as a float to divide by. Only variants
// that divide get both loops.
template <class Cfg, class F>
void with_divisor(float D, F&& f) {
  if constexpr (Cfg::has_out() && !Cfg::discard()) {
    int e;
    if (std::frexp(D, &e) == 0.5f) return f(Pow2Divisor{D, 1.f / D});
  }
  f(D);
}

// Calls piece(t, lo, f, len) for each tensor piece of the flat index range
// [begin, end): tensor t's elements [lo, lo + len), at flat index f.
template <class Piece>
void for_each_piece(const Plan& pl, int64_t begin, int64_t end, Piece&& piece) {
  // The tensor holding `begin`: the last one starting at or before it.
  int64_t t = std::upper_bound(pl.offsets.begin(), pl.offsets.end(), begin) - pl.offsets.begin() - 1;
  for (int64_t f = begin; f < end;) {
    while (f >= pl.offsets[t] + pl.numels[t]) ++t;  // steps over empty tensors too
    const int64_t lo = f - pl.offsets[t];
    const int64_t len = std::min(pl.numels[t] - lo, end - f);
    piece(t, lo, f, len);
    f += len;
  }
}

// The work is split by elements, not by tensors: a thread takes a range of the
// flat index space and walks the tensors in it. (Split by tensor, ResNet-50's
// 161 tensors, small ones first, ran no faster on 2 threads than on 1.)
template <class Cfg, typename P, typename A, typename F, class Divisor>
void run_typed(const Plan& pl, const CallScalars& sc, Divisor D) {
  const TypedRule<Cfg, P, A, F, Divisor> rule{sc.lr, sc.mu, D};
  auto body = [&](int64_t begin, int64_t end) {
    for_each_piece(pl, begin, end, [&](int64_t t, int64_t lo, int64_t f, int64_t len) {
      rule.run(static_cast<P*>(pl.params[t]) + lo,
               Cfg::has_anchor() ? static_cast<A*>(pl.anchors[t]) + lo : nullptr,
               Cfg::has_momentum() ? static_cast<A*>(pl.momenta[t]) + lo : nullptr,
               Cfg::has_reduced() && !Cfg::discard() ? at_or_null<const F>(pl.reduced, f) : nullptr,
               Cfg::has_sent() ? at_or_null<F>(pl.sent, f) : nullptr,
               Cfg::has_out() ? at_or_null<F>(pl.out, f) : nullptr, len);
    });
  };
  // A call smaller than one chunk runs on the calling thread: waking the pool
  // would cost more than the work (and is the host cost of a tiny call).
  if (pl.total <= kChunk) body(0, pl.total);
  else at::parallel_for(0, pl.total, kChunk, body);
}

template <class Cfg, typename P, typename A, typename F>
void run_typed(const Plan& pl, const CallScalars& sc) {
  with_divisor<Cfg>(sc.divisor, [&](auto D) { run_typed<Cfg, P, A, F>(pl, sc, D); });
}

// An 8-bit wire (NOTE: [8-bit codec] in quant.h): the same rule, one codec
// block of the flat index space at a time, through float32 blocks in L1: the
// reduced block dequantised in, the rule over each tensor piece the block
// covers (a block may span several tensors), then the block's absmax, scale
// and codes out, and `sent` = what the codes carry. One pass over memory.
template <class Cfg, typename P, typename A, typename C, class Divisor>
void run_quantized_typed(const Plan& pl, const CallScalars& sc, Divisor D) {
  constexpr int64_t kB = quant::kBlock;
  const TypedRule<Cfg, P, A, float, Divisor> rule{sc.lr, sc.mu, D};
  constexpr bool reads_reduced = Cfg::has_reduced() && !Cfg::discard();
  const int64_t nb = quant::num_blocks(pl.total);
  auto body = [&](int64_t b0, int64_t b1) {
    alignas(64) float red[kB], out[kB];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t f0 = b * kB, len = std::min(kB, pl.total - f0);
      if constexpr (reads_reduced) {
        const C* rc = static_cast<const C*>(pl.reduced) + f0;
        const float rs = pl.reduced_scales[b];
        quant::decode_block(rc, rs, red, len);
      }
      float* sent = Cfg::has_sent() ? static_cast<float*>(pl.sent) : nullptr;
      for_each_piece(pl, f0, f0 + len, [&](int64_t t, int64_t lo, int64_t f, int64_t n) {
        rule.run(static_cast<P*>(pl.params[t]) + lo,
                 Cfg::has_anchor() ? static_cast<A*>(pl.anchors[t]) + lo : nullptr,
                 Cfg::has_momentum() ? static_cast<A*>(pl.momenta[t]) + lo : nullptr,
                 reads_reduced ? red + (f - f0) : nullptr, sent ? sent + f : nullptr,
                 out + (f - f0), n);
      });
      const float scale = quant::scale_of<C>(quant::absmax_block(out, len));
      pl.out_scales[b] = scale;
      C* codes = static_cast<C*>(pl.out) + f0;
      quant::encode_block(out, scale, codes, len);
      if (sent) quant::decode_block(codes, scale, sent + f0, len);
    }
  };
  constexpr int64_t kBlocksPerItem = kChunk / kB;
  if (pl.total <= kChunk) body(0, nb);
  else at::parallel_for(0, nb, kBlocksPerItem, body);
}

template <class Cfg, typename P, typename A, typename C>
void run_quantized_typed(const Plan& pl, const CallScalars& sc) {
  with_divisor<Cfg>(sc.divisor, [&](auto D) { run_quantized_typed<Cfg, P, A, C>(pl, sc, D); });
}

void run_quantized(const Plan& pl, const CallScalars& sc) {
  const bool discard = pl.verdict && !verdict_valid(*pl.verdict);
  dispatch_variant(pl, sc.nesterov, [&](auto cfg) {
    using Cfg = std::decay_t<decltype(cfg)>;
    dispatch_param_anchor(pl, [&](auto p, auto a) {
      using P = std::decay_t<decltype(p)>;
      using A = std::decay_t<decltype(a)>;
      dispatch_codes(pl, [&](auto c) {
        using C = std::decay_t<decltype(c)>;
        if constexpr (Cfg::has_anchor() && Cfg::has_out() && Cfg::write_params()) {  // round_step
          if constexpr (Cfg::has_reduced()) {
            if (discard)
              return run_quantized_typed<FixedMomentum<typename Cfg::Discarding, false>, P, A, C>(pl, sc);
          }
          if constexpr (Cfg::has_momentum()) {
            if (sc.nesterov) return run_quantized_typed<FixedMomentum<Cfg, true>, P, A, C>(pl, sc);
          }
          run_quantized_typed<FixedMomentum<Cfg, false>, P, A, C>(pl, sc);
        }
      });
    });
  });
}

void run_cpu(const Plan& pl, const CallScalars& sc) {
  if (pl.empty()) return;
  if (pl.quantized) return run_quantized(pl, sc);
  // The verdict is read here, in the kernel, never by the caller: a discarded
  // round leaves anchors and momenta bitwise untouched (not even stored back)
  // and does not read `reduced` or the momenta at all.
  const bool discard = pl.verdict && !verdict_valid(*pl.verdict);
  dispatch_variant(pl, sc.nesterov, [&](auto cfg) {
    using Cfg = std::decay_t<decltype(cfg)>;
    dispatch_dtypes(pl, [&](auto p, auto a, auto f) {
      using P = std::decay_t<decltype(p)>;
      using A = std::decay_t<decltype(a)>;
      using F = std::decay_t<decltype(f)>;
      if constexpr (Cfg::has_anchor() || std::is_same_v<A, P>) {
        if constexpr (Cfg::has_reduced()) {
          if (discard)
            return run_typed<FixedMomentum<typename Cfg::Discarding, false>, P, A, F>(pl, sc);
        }
        if constexpr (Cfg::has_momentum()) {
          if (sc.nesterov) return run_typed<FixedMomentum<Cfg, true>, P, A, F>(pl, sc);
        }
        run_typed<FixedMomentum<Cfg, false>, P, A, F>(pl, sc);
      }
    });
  });
}

}  // namespace

// Nothing to prepare per plan on the CPU: a work item finds its tensors from the
// plan's offsets.
TORCH_LIBRARY_IMPL(hpsgd, CPU, m) { BoundaryOps<nullptr, &run_cpu>::register_all(m); }

}  // namespace hpsgd
