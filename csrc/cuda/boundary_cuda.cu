// CUDA runner for every hpsgd op: one multi-tensor launch applying the shared
// rule (csrc/rule.h) with a runtime configuration, one kernel per dtype
// combination (params, anchors, flat buffers).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../boundary_ops.h"
#include "multi_tensor_apply.cuh"

namespace hpsgd {
namespace cuda {
namespace {

template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[kVec]) {
  static_assert(sizeof(T) == 2, "16-bit types: one 16-byte load");
  uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < kVec; ++j) v[j] = static_cast<float>(e[j]);
}
template <>
__device__ __forceinline__ void load8<float>(const float* p, float (&v)[kVec]) {
  const float4 x = reinterpret_cast<const float4*>(p)[0];
  const float4 y = reinterpret_cast<const float4*>(p)[1];
  v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
  v[4] = y.x; v[5] = y.y; v[6] = y.z; v[7] = y.w;
}
template <typename T>
__device__ __forceinline__ void store8(T* p, const float (&v)[kVec]) {
  static_assert(sizeof(T) == 2, "16-bit types: one 16-byte store");
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int j = 0; j < kVec; ++j) e[j] = static_cast<T>(v[j]);
  *reinterpret_cast<uint4*>(p) = raw;
}
template <>
__device__ __forceinline__ void store8<float>(float* p, const float (&v)[kVec]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// Streams: list 0 = params (P), 1 = anchors (A), 2 = momentum buffers (A);
// flat: out, reduced, sent (F). Absent streams are neither loaded nor stored.
template <typename P, typename A, typename F>
struct BoundaryOp {
  F* out;
  const F* reduced;
  F* sent;
  const float* verdict;  // device pointer, null when absent
  RuntimeCfg cfg;
  float lr, mu, divisor;
  bool write_p, write_a, has_m;

  // Once per thread, before any element: the device reads its own verdict on
  // the reduced round (the host never does). A discarded round reads neither
  // `reduced` nor the momenta and stores neither anchors nor momenta.
  __device__ __forceinline__ void begin() {
    if (verdict) cfg.discard_ = !verdict_valid(*verdict);
  }

  // Loads n (1 or kVec) elements of every stream at tensor index i, applies
  // the rule, stores what this call writes.
  template <int N>
  __device__ __forceinline__ void apply(const TensorMeta& t, int64_t i) const {
    P* p = static_cast<P*>(t.list[0]) + i;
    A* a = static_cast<A*>(t.list[1]) + (t.list[1] ? i : 0);
    A* m = static_cast<A*>(t.list[2]) + (t.list[2] ? i : 0);
    const int64_t f = t.offset + i;
    float vp[N], va[N], vm[N], vr[N], vs[N], vo[N];
    load<N>(p, vp);
    if (cfg.anchor) load<N>(a, va);
    const bool merge = !cfg.discard();
    if (has_m && merge) load<N>(m, vm);
    if (cfg.reduced && merge) load<N>(reduced + f, vr);
    if (cfg.sent) load<N>(sent + f, vs);
#pragma unroll
    for (int j = 0; j < N; ++j) apply_rule(cfg, lr, mu, divisor, vp[j], va[j], vm[j], vr[j], vs[j], vo[j]);
    if (out) store<N>(out + f, vo);
    if (cfg.sent) store<N>(sent + f, vs);
    if (write_a && merge) store<N>(a, va);
    if (write_a && has_m && merge) store<N>(m, vm);
    if (write_p) store<N>(p, vp);
  }
  __device__ void scalar(const TensorMeta& t, int64_t i) const { apply<1>(t, i); }
  __device__ void vector(const TensorMeta& t, int64_t i) const { apply<kVec>(t, i); }

  template <int N, typename T>
  __device__ __forceinline__ static void load(const T* p, float (&v)[N]) {
    if constexpr (N == 1) v[0] = static_cast<float>(*p); else load8(p, v);
  }
  template <int N, typename T>
  __device__ __forceinline__ static void store(T* p, const float (&v)[N]) {
    if constexpr (N == 1) *p = static_cast<T>(v[0]); else store8(p, v);
  }
};

template <class F>
void dispatch_float(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: HPSGD_CHECK(false, "hpsgd: no CUDA kernel for dtype ", t);
  }
}

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

void run_cuda(const Plan& pl) {
  if (pl.empty()) return;
  const int64_t n = pl.size();
  MultiTensorLayout layout;
  layout.lists.resize(n);
  layout.numels.resize(n);
  layout.offsets = pl.offsets;
  layout.list_elem = {static_cast<int64_t>(c10::elementSize(pl.param_dtype)),
                      static_cast<int64_t>(c10::elementSize(pl.anchor_dtype)),
                      static_cast<int64_t>(c10::elementSize(pl.anchor_dtype))};
  for (int64_t i = 0; i < n; ++i) {
    layout.numels[i] = pl.params[i].numel();
    layout.lists[i] = {pl.params[i].data_ptr(),
                       pl.anchors.empty() ? nullptr : pl.anchors[i].data_ptr(),
                       pl.momenta.empty() ? nullptr : pl.momenta[i].data_ptr()};
  }
  for (const at::Tensor* f : {&pl.out, &pl.reduced, &pl.sent})
    if (f->defined()) layout.flats.push_back(f->data_ptr());
  layout.flat_elem = static_cast<int64_t>(c10::elementSize(pl.flat_dtype));
  const at::Device device = pl.params.empty() ? pl.out.device() : pl.params[0].device();

  dispatch_float(pl.param_dtype, [&](auto p_tag) {
    using P = decltype(p_tag);
    auto with_anchor = [&](auto a_tag) {
      using A = decltype(a_tag);
      dispatch_float(pl.flat_dtype, [&](auto f_tag) {
        using F = decltype(f_tag);
        BoundaryOp<P, A, F> op{data_or_null<F>(pl.out), data_or_null<const F>(pl.reduced),
                               data_or_null<F>(pl.sent), data_or_null<const float>(pl.verdict),
                               pl.cfg, pl.lr, pl.mu, pl.divisor, pl.write_params,
                               pl.write_anchors(), !pl.momenta.empty()};
        multi_tensor_apply(layout, device, op);
      });
    };
    if (pl.anchor_dtype == at::kFloat) with_anchor(float{}); else with_anchor(P{});
  });
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(hpsgd, CUDA, m) { BoundaryOps<&cuda::run_cuda>::register_all(m); }

}  // namespace hpsgd
