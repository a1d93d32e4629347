// CPU runner for every hpsgd op: at::parallel_for over chunks of all tensors;
// each chunk is processed in L1-sized blocks through the shared rule with a
// compile-time configuration (a branch-free loop the compiler vectorises).
// One pass over memory.
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
constexpr int64_t kBlock = 1024;     // elements per float32 scratch block

using LoadFn = void (*)(const char*, float*, int64_t);
using StoreFn = void (*)(const float*, char*, int64_t);

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

LoadFn loader(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return &load_as_float<float>;
    case at::kBFloat16: return &load_as_float<c10::BFloat16>;
    case at::kHalf: return &load_as_float<c10::Half>;
    default: HPSGD_CHECK(false, "hpsgd: no CPU loader for ", t);
  }
}
StoreFn storer(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return &store_from_float<float>;
    case at::kBFloat16: return &store_from_float<c10::BFloat16>;
    case at::kHalf: return &store_from_float<c10::Half>;
    default: HPSGD_CHECK(false, "hpsgd: no CPU storer for ", t);
  }
}

// Sources and destinations are separate pointers: a float32 stream is read and
// written in place in memory, a 16-bit stream through a float32 scratch block,
// and a stream this call does not write has a scratch destination (discarded).
// A source may equal its destination (same index read, then written), which
// `ivdep` tells the vectoriser is safe.
struct BlockIo {
  const float *p, *a, *m, *r, *s;
  float *p_out, *a_out, *m_out, *s_out, *o_out;
};
using RuleFn = void (*)(float, float, float, const BlockIo&, int64_t);

template <class Cfg>
void rule_block(float lr, float mu, float D, const BlockIo& io, int64_t n) {
  constexpr Cfg cfg{};
  const float *p_in = io.p, *a_in = io.a, *m_in = io.m, *r_in = io.r, *s_in = io.s;
  float *p_out = io.p_out, *a_out = io.a_out, *m_out = io.m_out, *s_out = io.s_out,
        *o_out = io.o_out;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    float p = p_in[i];
    float a = cfg.has_anchor() ? a_in[i] : 0.f;
    float m = cfg.momentum_mode() != kNoMomentum ? m_in[i] : 0.f;
    const float r = cfg.has_reduced() && !cfg.discard() ? r_in[i] : 0.f;
    float s = cfg.has_sent() ? s_in[i] : 0.f;
    float o;
    apply_rule(cfg, lr, mu, D, p, a, m, r, s, o);
    p_out[i] = p;
    a_out[i] = a;
    if (cfg.momentum_mode() != kNoMomentum) m_out[i] = m;
    if (cfg.has_sent()) s_out[i] = s;
    o_out[i] = o;
  }
}

template <bool A, bool R, bool S>
RuleFn pick_momentum(int mode) {
  switch (mode) {
    case kMomentum: return &rule_block<StaticCfg<A, R, S, kMomentum>>;
    case kNesterov: return &rule_block<StaticCfg<A, R, S, kNesterov>>;
    default: return &rule_block<StaticCfg<A, R, S, kNoMomentum>>;
  }
}
template <bool A, bool R>
RuleFn pick_sent(const RuntimeCfg& c) {
  return c.sent ? pick_momentum<A, R, true>(c.momentum) : pick_momentum<A, R, false>(c.momentum);
}
template <bool A>
RuleFn pick_reduced(const RuntimeCfg& c) {
  // Without a reduction there is no outer step: momentum cannot matter.
  return c.reduced ? pick_sent<A, true>(c) : pick_sent<A, false>({c.anchor, false, c.sent, 0});
}
// A discarded round reads only p, a (and writes p, out, sent): one simple
// configuration per anchor/sent, no momentum, nothing of `reduced`.
template <bool A>
RuleFn pick_discard(bool sent) {
  return sent ? &rule_block<StaticCfg<A, true, true, kNoMomentum, true>>
              : &rule_block<StaticCfg<A, true, false, kNoMomentum, true>>;
}
RuleFn pick_rule(const RuntimeCfg& c) {
  if (c.discard()) return c.anchor ? pick_discard<true>(c.sent) : pick_discard<false>(c.sent);
  return c.anchor ? pick_reduced<true>(c) : pick_reduced<false>(c);
}

// One stream of one call: where a block of it lives and how to move it.
struct Stream {
  at::ScalarType dtype = at::kFloat;
  int64_t elem = 0;
  bool present = false, written = false;
  LoadFn load = nullptr;
  StoreFn store = nullptr;

  Stream() = default;
  Stream(at::ScalarType t, bool present_, bool written_)
      : dtype(t), elem(c10::elementSize(t)), present(present_), written(written_ && present_),
        load(loader(t)), store(storer(t)) {}

  bool direct() const { return dtype == at::kFloat; }
  // The float32 source of a block at `mem` (null when absent).
  const float* source(char* mem, float* scratch, int64_t len) const {
    if (!present) return nullptr;
    if (direct()) return reinterpret_cast<const float*>(mem);
    load(mem, scratch, len);
    return scratch;
  }
  float* destination(char* mem, float* scratch) const {
    return written && direct() ? reinterpret_cast<float*>(mem) : scratch;
  }
  void finish(const float* scratch, char* mem, int64_t len) const {
    if (written && !direct()) store(scratch, mem, len);
  }
};

char* data_or_null(const at::Tensor& t) {
  return t.defined() ? static_cast<char*>(t.data_ptr()) : nullptr;
}

void run_cpu(const Plan& pl) {
  if (pl.empty()) return;
  const int64_t n = pl.size();
  std::vector<int64_t> numels(n);
  for (int64_t i = 0; i < n; ++i) numels[i] = pl.params[i].numel();
  const std::vector<int64_t> first = chunk_prefix(numels, kChunk);

  // The verdict is read here, in the kernel, never by the caller: a discarded
  // round leaves anchors and momenta bitwise untouched (not even stored back)
  // and does not read `reduced` or the momenta at all.
  RuntimeCfg cfg = pl.cfg;
  if (pl.verdict.defined()) cfg.discard_ = !verdict_valid(*pl.verdict.data_ptr<float>());
  const RuleFn rule = pick_rule(cfg);
  const bool merge = !cfg.discard();
  const bool has_a = !pl.anchors.empty(), has_m = !pl.momenta.empty() && merge;
  const Stream sp(pl.param_dtype, true, pl.write_params);
  const Stream sa(pl.anchor_dtype, has_a, pl.write_anchors() && merge);
  const Stream sm(pl.anchor_dtype, has_m, pl.write_anchors());
  const Stream sr(pl.flat_dtype, pl.reduced.defined() && merge, false);
  const Stream ss(pl.flat_dtype, pl.sent.defined(), true);
  const Stream so(pl.flat_dtype, pl.out.defined(), true);
  char* const red = data_or_null(pl.reduced);
  char* const sent = data_or_null(pl.sent);
  char* const out = data_or_null(pl.out);
  const float lr = pl.lr, mu = pl.mu, D = pl.divisor;

  at::parallel_for(0, first.back(), 1, [&](int64_t begin, int64_t end) {
    alignas(64) float P[kBlock], A[kBlock], M[kBlock], R[kBlock], S[kBlock], O[kBlock];
    for (int64_t c = begin; c < end; ++c) {
      const int64_t t = owner_of_chunk(c, n, [&](int64_t i) { return first[i]; });
      const int64_t lo = (c - first[t]) * kChunk;
      const int64_t hi = std::min(numels[t], lo + kChunk);
      char* p = static_cast<char*>(pl.params[t].data_ptr());
      char* a = has_a ? static_cast<char*>(pl.anchors[t].data_ptr()) : nullptr;
      char* m = has_m ? static_cast<char*>(pl.momenta[t].data_ptr()) : nullptr;
      const int64_t off = pl.offsets[t];
      for (int64_t b = lo; b < hi; b += kBlock) {
        const int64_t len = std::min(kBlock, hi - b);
        const int64_t f = off + b;  // flat index of this block
        char* pb = p + b * sp.elem;
        char* ab = has_a ? a + b * sa.elem : nullptr;
        char* mb = has_m ? m + b * sm.elem : nullptr;
        char* rb = red ? red + f * sr.elem : nullptr;
        char* sb = sent ? sent + f * ss.elem : nullptr;
        char* ob = out ? out + f * so.elem : nullptr;
        const BlockIo io{sp.source(pb, P, len), sa.source(ab, A, len), sm.source(mb, M, len),
                         sr.source(rb, R, len), ss.source(sb, S, len),
                         sp.destination(pb, P), sa.destination(ab, A), sm.destination(mb, M),
                         ss.destination(sb, S), so.destination(ob, O)};
        rule(lr, mu, D, io, len);
        so.finish(O, ob, len);
        ss.finish(S, sb, len);
        sa.finish(A, ab, len);
        sm.finish(M, mb, len);
        sp.finish(P, pb, len);
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(hpsgd, CPU, m) { BoundaryOps<&run_cpu>::register_all(m); }

}  // namespace hpsgd
