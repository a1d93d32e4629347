// CPU runner for every hpsgd op: at::parallel_for over chunks of all tensors;
// each chunk is converted to float32 in L1-sized blocks, run through the shared
// rule with a compile-time configuration (a branch-free loop the compiler
// vectorises), and stored back in each stream's dtype. One pass over memory.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>

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
void load_as_float(const char* src, float* dst, int64_t n) {
  const T* s = reinterpret_cast<const T*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
}
template <typename T>
void store_from_float(const float* src, char* dst, int64_t n) {
  T* d = reinterpret_cast<T*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<T>(src[i]);
}
template <>
void load_as_float<float>(const char* src, float* dst, int64_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}
template <>
void store_from_float<float>(const float* src, char* dst, int64_t n) {
  std::memcpy(dst, src, n * sizeof(float));
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

using RuleFn = void (*)(float, float, float*, float*, float*, const float*, float*, float*,
                        int64_t);

template <class Cfg>
void rule_block(float lr, float mu, float* __restrict__ p, float* __restrict__ a,
                float* __restrict__ m, const float* __restrict__ r, float* __restrict__ s,
                float* __restrict__ out, int64_t n) {
  constexpr Cfg cfg{};
  for (int64_t i = 0; i < n; ++i) apply_rule(cfg, lr, mu, p[i], a[i], m[i], r[i], s[i], out[i]);
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
RuleFn pick_rule(const RuntimeCfg& c) {
  return c.anchor ? pick_reduced<true>(c) : pick_reduced<false>(c);
}

struct Stream {
  char* base = nullptr;  // null when absent
  int64_t elem = 0;
  LoadFn load = nullptr;
  StoreFn store = nullptr;
};

Stream flat_stream(const at::Tensor& t) {
  if (!t.defined()) return {};
  return {static_cast<char*>(t.data_ptr()), static_cast<int64_t>(t.element_size()),
          loader(t.scalar_type()), storer(t.scalar_type())};
}

void run_cpu(const Plan& pl) {
  if (pl.empty()) return;
  const int64_t n = pl.size();
  std::vector<int64_t> numels(n);
  for (int64_t i = 0; i < n; ++i) numels[i] = pl.params[i].numel();
  const std::vector<int64_t> first = chunk_prefix(numels, kChunk);

  const RuleFn rule = pick_rule(pl.cfg);
  const LoadFn load_p = loader(pl.param_dtype), load_a = loader(pl.anchor_dtype);
  const StoreFn store_p = storer(pl.param_dtype), store_a = storer(pl.anchor_dtype);
  const int64_t p_elem = c10::elementSize(pl.param_dtype);
  const int64_t a_elem = c10::elementSize(pl.anchor_dtype);
  const Stream out = flat_stream(pl.out), red = flat_stream(pl.reduced),
               sent = flat_stream(pl.sent);
  const bool has_a = !pl.anchors.empty(), has_m = !pl.momenta.empty();
  const bool write_a = pl.write_anchors();
  const float lr = pl.lr, mu = pl.mu;

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
        load_p(p + b * p_elem, P, len);
        if (has_a) load_a(a + b * a_elem, A, len);
        if (has_m) load_a(m + b * a_elem, M, len);
        if (red.base) red.load(red.base + f * red.elem, R, len);
        if (sent.base) sent.load(sent.base + f * sent.elem, S, len);
        rule(lr, mu, P, A, M, R, S, O, len);
        if (out.base) out.store(O, out.base + f * out.elem, len);
        if (sent.base) sent.store(S, sent.base + f * sent.elem, len);
        if (write_a) store_a(A, a + b * a_elem, len);
        if (write_a && has_m) store_a(M, m + b * a_elem, len);
        if (pl.write_params) store_p(P, p + b * p_elem, len);
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(hpsgd, CPU, m) { BoundaryOps<&run_cpu>::register_all(m); }

}  // namespace hpsgd
