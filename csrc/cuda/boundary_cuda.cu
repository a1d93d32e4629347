// CUDA runner for every hpsgd op: one multi-tensor launch (see [block ranges]
// in multi_tensor_apply.cuh) applying the shared rule (csrc/rule.h), one
// kernel per variant and dtype combination (see [kernel variants] in
// boundary_ops.h): a kernel holds no pointer, load or branch of a stream it
// does not touch.
//
// Inside a tensor, elements go two ways:
// - aligned path (every stream aligned to a whole unit at one common element):
//   whole units of kUnit elements, lanes on consecutive units (one warp access
//   is 512 contiguous bytes of a float32 stream), one unit of every stream
//   loaded before the first use; the fewer than kUnit elements on either side
//   go one per thread in a single pass (see [piece split] in csrc/chunking.h);
// - misaligned path (a stream shifted against the others, e.g. every segment
//   after a 10-class head in the flat buffer): one element per access, lanes
//   on consecutive elements (coalesced), kScalar elements per thread loaded
//   before the first use. The flat layout keeps no padding (DESIGN.md 4).
// Both stay within 64 registers, so 4 blocks of 256 threads are resident per
// SM (kMinBlocks; docs/kernel-notes.md, version 3).
// Loads and stores carry the streaming hint: every byte is touched once.
#include <set>
#include <string>
#include <type_traits>

#include "../boundary_ops.h"
#include "io.cuh"
#include "kernel_info.cuh"
#include "multi_tensor_apply.cuh"
#include "quantized_step.h"

namespace hpsgd {
namespace cuda {
namespace {

// One tensor's streams, each pointing at the tensor's element 0 (flat streams
// at its segment); absent streams are never touched.
template <typename P, typename A, typename F>
struct Ptrs {
  P* __restrict__ p;
  A* __restrict__ a;
  A* __restrict__ m;
  const F* __restrict__ r;
  F* __restrict__ s;
  F* __restrict__ o;
};

// Streams: list 0 = params (P), 1 = anchors (A), 2 = momentum buffers (A);
// flat: out, reduced, sent (F).
template <class Cfg, typename P, typename A, typename F>
struct BoundaryOp {
  F* out;
  const F* reduced;
  F* sent;
  const float* verdict;  // device pointer, null when absent
  float lr, mu, divisor;
  bool nesterov;
  bool discard = false;  // set per thread by begin()

  // Elements per thread per tile on the misaligned path: two keep it under
  // the 64-register cap with the aligned path beside it (four took the kernel
  // to 72-84 registers, nvcc 13.0).
  static constexpr int kScalar = 2;

  // Once per thread, before any element: the device reads its own verdict on
  // the reduced round (the host never does). A discarded round reads neither
  // `reduced` nor the momenta and stores neither anchors nor momenta.
  __device__ __forceinline__ void begin() {
    if constexpr (Cfg::has_reduced()) discard = verdict != nullptr && !verdict_valid(*verdict);
  }

  __device__ __forceinline__ void piece(const TensorMeta& t, int64_t lo, int64_t hi) const {
    if constexpr (Cfg::has_reduced()) {
      if (discard) return piece_as<typename Cfg::Discarding>(t, lo, hi);
    }
    piece_as<Cfg>(t, lo, hi);
  }

 private:
  template <class C>
  __device__ __forceinline__ void piece_as(const TensorMeta& t, int64_t lo, int64_t hi) const {
    Ptrs<P, A, F> q{static_cast<P*>(t.list[0]),
                    C::has_anchor() ? static_cast<A*>(t.list[1]) : nullptr,
                    C::has_momentum() ? static_cast<A*>(t.list[2]) : nullptr,
                    C::has_reduced() && !C::discard() ? reduced + t.offset : nullptr,
                    C::has_sent() ? sent + t.offset : nullptr,
                    C::has_out() ? out + t.offset : nullptr};
    C cfg;
    cfg.nesterov = nesterov;
    if (t.vec_ok) {
      const PieceSplit sp = split_piece(t.head, lo, hi, kUnit);
      edges(cfg, q, sp, lo, hi);
      units(cfg, q, sp);
    } else {
      misaligned(cfg, q, lo, hi);
    }
  }

  template <class C, int N>
  __device__ __forceinline__ void apply(const C& cfg, float (&p)[N], float (&a)[N], float (&m)[N],
                                        float (&r)[N], float (&s)[N], float (&o)[N]) const {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      // Absent streams read as 0 (never loaded, never stored).
      if constexpr (!C::has_anchor()) a[j] = 0.f;
      if constexpr (!C::has_momentum()) m[j] = 0.f;
      if constexpr (!C::has_reduced() || C::discard()) r[j] = 0.f;
      if constexpr (!C::has_sent()) s[j] = 0.f;
      apply_rule(cfg, lr, mu, divisor, p[j], a[j], m[j], r[j], s[j], o[j]);
    }
  }

  // The streams of one tile, each advanced to this thread's first element: the
  // tile's accesses are then constant offsets from one pointer per stream (no
  // 64-bit address kept per element between the loads and the stores).
  template <class C>
  __device__ __forceinline__ static Ptrs<P, A, F> at(const Ptrs<P, A, F>& q, int64_t e) {
    return {q.p + e,
            C::has_anchor() ? q.a + e : nullptr,
            C::has_momentum() ? q.m + e : nullptr,
            C::has_reduced() && !C::discard() ? q.r + e : nullptr,
            C::has_sent() ? q.s + e : nullptr,
            C::has_out() ? q.o + e : nullptr};
  }

  // One tile of N elements per stream: every present stream loaded (`ld`)
  // before the first use, the rule, every written stream stored (`st`).
  template <class C, int N, class Ld, class St>
  __device__ __forceinline__ void tile(const C& cfg, const Ptrs<P, A, F>& t, Ld&& ld,
                                       St&& st) const {
    float vp[N], va[N], vm[N], vr[N], vsn[N], vo[N];
    ld(t.p, vp);
    if constexpr (C::has_anchor()) ld(t.a, va);
    if constexpr (C::has_momentum()) ld(t.m, vm);
    if constexpr (C::has_reduced() && !C::discard()) ld(t.r, vr);
    if constexpr (C::has_sent()) ld(t.s, vsn);
    apply(cfg, vp, va, vm, vr, vsn, vo);
    if constexpr (C::has_out()) st(t.o, vo);
    if constexpr (C::has_sent()) st(t.s, vsn);
    if constexpr (C::write_anchors()) st(t.a, va);
    if constexpr (C::write_anchors() && C::has_momentum()) st(t.m, vm);
    if constexpr (C::write_params()) st(t.p, vp);
  }

  template <class Ptr>
  using Elem = std::remove_const_t<std::remove_pointer_t<Ptr>>;

  // One element per thread at most: the edges of [piece split].
  template <class C>
  __device__ __forceinline__ void edges(const C& cfg, const Ptrs<P, A, F>& q, const PieceSplit& sp,
                                        int64_t lo, int64_t hi) const {
    const int64_t e = edge_element(sp, lo, hi, static_cast<int>(threadIdx.x), kThreads);
    if (e < 0) return;
    tile<C, 1>(
        cfg, at<C>(q, e),
        [](auto* p, float(&v)[1]) { v[0] = Io<Elem<decltype(p)>>::load1(p); },
        [](auto* p, const float(&v)[1]) { Io<Elem<decltype(p)>>::store1(p, v[0]); });
  }

  // The whole units of [piece split], lanes on consecutive units.
  template <class C>
  __device__ __forceinline__ void units(const C& cfg, const Ptrs<P, A, F>& q,
                                        const PieceSplit& sp) const {
    // Not unrolled: the compiler's own unrolling of this loop only costs
    // registers (the loads of a unit are already independent).
#pragma unroll 1
    for (int64_t u = threadIdx.x; u < sp.units; u += kThreads)
      tile<C, kUnit>(
          cfg, at<C>(q, sp.vs + u * kUnit),
          [](auto* p, float(&v)[kUnit]) { Io<Elem<decltype(p)>>::load4(p, v); },
          [](auto* p, const float(&v)[kUnit]) { Io<Elem<decltype(p)>>::store4(p, v); });
  }

  // Elements [x0, x1), lanes on consecutive elements, kScalar per thread.
  template <class C>
  __device__ __forceinline__ void misaligned(const C& cfg, const Ptrs<P, A, F>& q, int64_t x0,
                                             int64_t x1) const {
    constexpr int S = kScalar;
#pragma unroll 1
    for (int64_t b = x0 + threadIdx.x; b < x1; b += int64_t{kThreads} * S) {
      const int64_t left = x1 - b;  // >= 1
      tile<C, S>(
          cfg, at<C>(q, b),
          [left](auto* p, float(&v)[S]) {
#pragma unroll
            for (int j = 0; j < S; ++j)
              if (j * kThreads < left) v[j] = Io<Elem<decltype(p)>>::load1(p + j * kThreads);
          },
          [left](auto* p, const float(&v)[S]) {
#pragma unroll
            for (int j = 0; j < S; ++j)
              if (j * kThreads < left) Io<Elem<decltype(p)>>::store1(p + j * kThreads, v[j]);
          });
    }
  }
};

MultiTensorLayout layout_of(const Plan& pl) {
  const int64_t n = pl.size();
  MultiTensorLayout layout;
  layout.lists.resize(n);
  layout.numels = pl.numels;
  layout.offsets = pl.offsets;
  layout.list_elem = {static_cast<int64_t>(c10::elementSize(pl.param_dtype)),
                      static_cast<int64_t>(c10::elementSize(pl.anchor_dtype)),
                      static_cast<int64_t>(c10::elementSize(pl.anchor_dtype))};
  for (int64_t i = 0; i < n; ++i)
    layout.lists[i] = {pl.params[i], pl.anchors.empty() ? nullptr : pl.anchors[i],
                       pl.momenta.empty() ? nullptr : pl.momenta[i]};
  for (const void* f : {pl.out, pl.reduced, pl.sent})
    if (f) layout.flats.push_back(f);
  layout.flat_elem = static_cast<int64_t>(c10::elementSize(pl.flat_dtype));
  layout.units = !pl.quantized;  // the 8-bit step walks elements (quantized_step_cuda.cu)
  return layout;
}

// Calls f.template operator()<Op>() with the Plan's kernel (one per variant and dtypes).
template <class F>
void dispatch_op(const Plan& pl, bool nesterov, F&& f) {
  dispatch_variant(pl, nesterov, [&](auto cfg) {
    using Cfg = std::decay_t<decltype(cfg)>;
    dispatch_dtypes(pl, [&](auto p, auto a, auto fl) {
      using P = std::decay_t<decltype(p)>;
      using A = std::decay_t<decltype(a)>;
      // Without anchors the anchor type is the params' (plan.cpp): no other kernel.
      if constexpr (Cfg::has_anchor() || std::is_same_v<A, P>)
        f(BoundaryOp<Cfg, P, A, std::decay_t<decltype(fl)>>{}, cfg);
    });
  });
}

// Metadata a captured CUDA graph refers to: kept for the life of the process,
// whether the Plan was cached before the capture or during it (see
// [device metadata] in multi_tensor_apply.cuh).
void keep_for_graphs(const std::shared_ptr<const void>& prepared) {
  static std::mutex mu;
  static auto* kept = new std::vector<std::shared_ptr<const void>>();
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& k : *kept)
    if (k == prepared) return;
  kept->push_back(prepared);
}

void prepare_cuda(Plan& pl) {
  if (pl.quantized) {
    prepare_quantized(pl, layout_of(pl));
    if (capturing()) pl.permanent = true;
    return;
  }
  dispatch_op(pl, false, [&](auto op, auto) {
    pl.prepared = prepare_launch<std::decay_t<decltype(op)>>(layout_of(pl), pl.total, pl.device);
  });
  if (capturing()) pl.permanent = true;
}

template <typename T>
T* typed(void* p) {
  return static_cast<T*>(p);
}

void run_cuda(const Plan& pl, const CallScalars& sc) {
  if (pl.empty()) return;
  if (capturing()) keep_for_graphs(pl.prepared);
  if (pl.quantized) return run_quantized(pl, sc);
  const auto& launch = *static_cast<const Launch*>(pl.prepared.get());
  dispatch_op(pl, sc.nesterov, [&](auto op, auto) {
    using Op = std::decay_t<decltype(op)>;
    using F = std::remove_pointer_t<decltype(op.out)>;
    op.out = typed<F>(pl.out);
    op.reduced = typed<const F>(pl.reduced);
    op.sent = typed<F>(pl.sent);
    op.verdict = pl.verdict;
    op.lr = sc.lr;
    op.mu = sc.mu;
    op.divisor = sc.divisor;
    op.nesterov = sc.nesterov;
    multi_tensor_apply<Op>(launch, pl.device, op);
  });
}

template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "f32";
  else if constexpr (std::is_same_v<T, c10::BFloat16>) return "bf16";
  else return "f16";
}

template <class Cfg, typename P, typename A, typename F>
std::string kernel_name(const BoundaryOp<Cfg, P, A, F>&) {
  std::string s = "boundary[";
  s += Cfg::has_anchor() ? "a" : "-";
  s += Cfg::has_reduced() ? "r" : "-";
  s += Cfg::has_sent() ? "s" : "-";
  s += Cfg::has_momentum() ? "m" : "-";
  s += Cfg::has_out() ? "o" : "-";
  s += Cfg::write_params() ? "p" : "-";
  s += "] p=";
  s += dtype_name<P>();
  s += " a=";
  s += dtype_name<A>();
  s += " f=";
  s += dtype_name<F>();
  return s;
}

}  // namespace

std::vector<KernelInfo> preload_kernels() {
  // Every kernel run_cuda can launch, found through the same dispatch: a fake
  // Plan per op shape (see [kernel variants]) and dtype combination.
  struct Shape { bool a, r, s, m, out, wp; };
  const Shape shapes[] = {
      {false, false, false, false, true, false},  // flatten
      {false, true, false, false, false, true},   // unflatten
      {true, false, false, false, true, false},   // delta_flatten
      {true, true, false, false, false, true},    // merge
      {true, false, false, false, true, true},  {true, false, true, false, true, true},
      {true, true, false, false, true, true},   {true, true, true, false, true, true},
      {true, true, false, true, true, true},    {true, true, true, true, true, true},
  };
  const at::ScalarType types[] = {at::kFloat, at::kBFloat16, at::kHalf};
  std::vector<KernelInfo> out;
  std::set<std::string> seen;
  static char dummy;
  for (const Shape& sh : shapes)
    for (at::ScalarType p : types)
      for (at::ScalarType a : types)
        for (at::ScalarType f : types) {
          if (a != p && a != at::kFloat) continue;
          if (!sh.a && a != p) continue;
          Plan pl;
          pl.cfg.anchor = sh.a;
          pl.cfg.reduced = sh.r;
          pl.cfg.sent = sh.s;
          pl.has_momenta = sh.m;
          pl.out = sh.out ? &dummy : nullptr;
          pl.write_params = sh.wp;
          pl.param_dtype = p;
          pl.anchor_dtype = a;
          pl.flat_dtype = f;
          dispatch_op(pl, false, [&](auto op, auto) {
            using Op = std::decay_t<decltype(op)>;
            std::string name = kernel_name(op);
            if (!seen.insert(name).second) return;
            out.push_back(kernel_info(std::move(name), multi_tensor_kernel<Op>, kThreads));
            blocks_per_sm<Op>();  // cached now: a first prepare_launch asks nothing
          });
        }
  for (KernelInfo& k : verdict_kernels()) out.push_back(std::move(k));
  for (KernelInfo& k : quant_sum_kernels()) out.push_back(std::move(k));
  for (KernelInfo& k : quantized_kernels()) out.push_back(std::move(k));
  return out;
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(hpsgd, CUDA, m) {
  BoundaryOps<&cuda::prepare_cuda, &cuda::run_cuda>::register_all(m);
}

}  // namespace hpsgd
