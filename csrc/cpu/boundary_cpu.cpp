// CPU runner for every hpsgd op: at::parallel_for over chunks of all tensors;
// each chunk runs one typed loop (per dtype of params, anchors and flat
// buffers, per kernel variant: see [kernel variants] in boundary_ops.h) that
// converts eight elements of each stream to float32 in registers, applies the
// shared rule (the compiler vectorises the eight lanes) and converts back.
// One pass over memory, no scratch buffers.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>

#ifdef __F16C__
#include <immintrin.h>
#endif

#include "../boundary_ops.h"
#include "../checks.h"
#include "../chunking.h"

namespace hpsgd {
namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per parallel work item

template <typename T>
void load_as_float(const char* src, float* dst, int64_t n);
template <typename T>
void store_from_float(const float* src, char* dst, int64_t n);

template <>
void load_as_float<float>(const char* src, float* dst, int64_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}
template <>
void store_from_float<float>(const float* src, char* dst, int64_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}

// bfloat16 as bit operations the compiler vectorises (c10::BFloat16's scalar
// conversion does not): widen by a shift; narrow with round-to-nearest-even,
// NaN kept quiet. Bit-identical to c10::BFloat16.
template <>
void load_as_float<c10::BFloat16>(const char* src, float* dst, int64_t n) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  uint32_t* d = reinterpret_cast<uint32_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<uint32_t>(s[i]) << 16;
}
template <>
void store_from_float<c10::BFloat16>(const float* src, char* dst, int64_t n) {
  const uint32_t* s = reinterpret_cast<const uint32_t*>(src);
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = s[i];
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    d[i] = static_cast<uint16_t>(nan ? 0x7fc0u : rounded);
  }
}

template <>
void load_as_float<c10::Half>(const char* src, float* dst, int64_t n) {
  const c10::Half* s = reinterpret_cast<const c10::Half*>(src);
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(s[i]);
}
template <>
void store_from_float<c10::Half>(const float* src, char* dst, int64_t n) {
  c10::Half* d = reinterpret_cast<c10::Half*>(dst);
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) d[i] = static_cast<c10::Half>(src[i]);
}

// Eight elements of a stream at a time, as float32 in registers: the typed
// loop below converts on load and store, so a 16-bit stream costs no extra
// pass through a scratch buffer (the all-16-bit path was bound by those).
template <typename T>
inline void load8(const T* src, float* dst) {
  load_as_float<T>(reinterpret_cast<const char*>(src), dst, 8);
}
template <typename T>
inline void store8(const float* src, T* dst) {
  store_from_float<T>(src, reinterpret_cast<char*>(dst), 8);
}
template <typename T>
inline float load1(const T* src) {
  float v;
  load_as_float<T>(reinterpret_cast<const char*>(src), &v, 1);
  return v;
}
template <typename T>
inline void store1(float v, T* dst) {
  store_from_float<T>(&v, reinterpret_cast<char*>(dst), 1);
}

// One tensor's elements [lo, hi) through the rule, with every stream typed
// (P params, A anchors and momenta, F flat) and present only if Cfg says so
// (see [kernel variants] in boundary_ops.h). A discarded round reads neither
// `reduced` nor the momenta and stores neither anchors nor momenta.
template <class Cfg, typename P, typename A, typename F>
struct TypedRule {
  Cfg cfg;
  float lr, mu, D;

  template <int N>
  inline void group(P* p, A* a, A* m, const F* r, F* s, F* o) const {
    float vp[N], va[N], vm[N], vr[N], vs[N], vo[N];
    auto ld = [](const auto* src, float* dst) {
      if constexpr (N == 8) load8(src, dst); else dst[0] = load1(src);
    };
    auto st = [](const float* src, auto* dst) {
      if constexpr (N == 8) store8(src, dst); else store1(src[0], dst);
    };
    ld(p, vp);
    if constexpr (Cfg::has_anchor()) ld(a, va);
    if constexpr (Cfg::has_momentum()) ld(m, vm);
    if constexpr (Cfg::has_reduced() && !Cfg::discard()) ld(r, vr);
    if constexpr (Cfg::has_sent()) ld(s, vs);
    for (int j = 0; j < N; ++j) {
      if constexpr (!Cfg::has_anchor()) va[j] = 0.f;
      if constexpr (!Cfg::has_momentum()) vm[j] = 0.f;
      if constexpr (!Cfg::has_reduced() || Cfg::discard()) vr[j] = 0.f;
      if constexpr (!Cfg::has_sent()) vs[j] = 0.f;
      apply_rule(cfg, lr, mu, D, vp[j], va[j], vm[j], vr[j], vs[j], vo[j]);
    }
    if constexpr (Cfg::has_out()) st(vo, o);
    if constexpr (Cfg::has_sent()) st(vs, s);
    if constexpr (Cfg::write_anchors()) st(va, a);
    if constexpr (Cfg::has_momentum() && Cfg::write_anchors()) st(vm, m);
    if constexpr (Cfg::write_params()) st(vp, p);
  }

  void run(P* p, A* a, A* m, const F* r, F* s, F* o, int64_t len) const {
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
      group<8>(p + i, a ? a + i : a, m ? m + i : m, r ? r + i : r, s ? s + i : s, o ? o + i : o);
    for (; i < len; ++i)
      group<1>(p + i, a ? a + i : a, m ? m + i : m, r ? r + i : r, s ? s + i : s, o ? o + i : o);
  }
};

template <typename T>
T* at_or_null(void* base, int64_t i) {
  return base ? static_cast<T*>(base) + i : nullptr;
}

template <class Cfg, typename P, typename A, typename F>
void run_typed(const Plan& pl, const Cfg& cfg, const CallScalars& sc,
               const std::vector<int64_t>& first) {
  const TypedRule<Cfg, P, A, F> rule{cfg, sc.lr, sc.mu, sc.divisor};
  const int64_t n = pl.size();
  at::parallel_for(0, first.back(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t t = owner_of_chunk(c, n, [&](int64_t i) { return first[i]; });
      const int64_t lo = (c - first[t]) * kChunk;
      const int64_t len = std::min(pl.numels[t], lo + kChunk) - lo;
      const int64_t f = pl.offsets[t] + lo;  // flat index of element lo
      rule.run(static_cast<P*>(pl.params[t]) + lo,
               Cfg::has_anchor() ? static_cast<A*>(pl.anchors[t]) + lo : nullptr,
               Cfg::has_momentum() ? static_cast<A*>(pl.momenta[t]) + lo : nullptr,
               Cfg::has_reduced() ? at_or_null<const F>(pl.reduced, f) : nullptr,
               Cfg::has_sent() ? at_or_null<F>(pl.sent, f) : nullptr,
               Cfg::has_out() ? at_or_null<F>(pl.out, f) : nullptr, len);
    }
  });
}

// Once per cached Plan: the chunk prefix (see chunking.h).
void prepare_cpu(Plan& pl) {
  pl.prepared = std::make_shared<const std::vector<int64_t>>(chunk_prefix(pl.numels, kChunk));
}

void run_cpu(const Plan& pl, const CallScalars& sc) {
  if (pl.empty()) return;
  std::shared_ptr<const void> prepared = pl.prepared;
  if (!prepared) {  // an uncached call
    prepared = std::make_shared<const std::vector<int64_t>>(chunk_prefix(pl.numels, kChunk));
  }
  const auto& first = *static_cast<const std::vector<int64_t>*>(prepared.get());
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
          if (discard) return run_typed<typename Cfg::Discarding, P, A, F>(
              pl, typename Cfg::Discarding{}, sc, first);
        }
        run_typed<Cfg, P, A, F>(pl, cfg, sc, first);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(hpsgd, CPU, m) { BoundaryOps<&prepare_cpu, &run_cpu>::register_all(m); }

}  // namespace hpsgd
