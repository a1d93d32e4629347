// round_step on an 8-bit wire (NOTE: [8-bit codec] in csrc/quant.h): one CUDA
// block per codec block of the flat index space at a time (grid-stride), so the
// block's absmax is known before its codes are written, in the same pass that
// computes the change: each thread applies the shared rule (csrc/rule.h) to
// kPer elements, lanes on consecutive elements (coalesced), finds each
// element's tensor from the Plan's device metadata (a codec block may span
// several tensors: a cursor, and a binary search when it falls behind), keeps
// the outgoing value in a register, joins the block's absmax (warp shuffles,
// then one shared word per warp), and writes codes, the scale and `sent` =
// what the codes carry. The reduced round is read as codes times its block's
// scale. The verdict is read on the device, as in the multi-tensor kernels.
#include <c10/cuda/CUDAGuard.h>

#include <set>
#include <string>
#include <type_traits>

#include "../boundary_ops.h"
#include "../quant.h"
#include "io.cuh"
#include "kernel_info.cuh"
#include "quantized_step.h"

namespace hpsgd {
namespace cuda {
namespace {

constexpr int kQThreads = 128;
constexpr int kPer = static_cast<int>(quant::kBlock) / kQThreads;  // elements per thread
constexpr int kWarps = kQThreads / 32;
static_assert(kPer * kQThreads == quant::kBlock, "a CUDA block covers one codec block");

template <class Cfg, typename P, typename A, typename C>
struct QuantizedStep {
  C* out;
  const C* reduced;
  float* out_scales;
  const float* reduced_scales;
  float* sent;
  const float* verdict;
  float lr, mu, divisor;
  bool nesterov;
};

// The tensor holding flat element f, at or after the thread's cursor `t`.
__device__ __forceinline__ int64_t tensor_of(const TensorMeta* __restrict__ metas, int64_t n,
                                             int64_t f, int64_t t) {
  if (f < metas[t].offset + metas[t].numel) return t;
  int64_t lo = t, hi = n;  // the last tensor starting at or before f (skips empty ones)
#pragma unroll 1
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (metas[mid].offset <= f) lo = mid; else hi = mid;
  }
  return lo;
}

template <class Cfg, typename P, typename A, typename C>
__global__ void __launch_bounds__(kQThreads)
    quantized_step_kernel(const TensorMeta* __restrict__ metas, int64_t n, int64_t total,
                          QuantizedStep<Cfg, P, A, C> op) {
  __shared__ float warp_max[kWarps];
  bool discard = false;
  if constexpr (Cfg::has_reduced()) discard = op.verdict != nullptr && !verdict_valid(*op.verdict);
  const int64_t nb = quant::num_blocks(total);
  int64_t t = 0;
  auto run = [&](auto cfg_tag) {
    using K = decltype(cfg_tag);
    K cfg;
    cfg.nesterov = op.nesterov;
    constexpr bool reads_reduced = K::has_reduced() && !K::discard();
#pragma unroll 1
    for (int64_t b = blockIdx.x; b < nb; b += gridDim.x) {
      const float rs = reads_reduced ? op.reduced_scales[b] : 0.f;
      float o[kPer];
      float m = 0.f;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int64_t f = b * quant::kBlock + j * kQThreads + threadIdx.x;
        o[j] = 0.f;
        if (f >= total) continue;
        t = tensor_of(metas, n, f, t);
        const TensorMeta& tm = metas[t];
        const int64_t e = f - tm.offset;
        P* p = static_cast<P*>(tm.list[0]) + e;
        A* a = K::has_anchor() ? static_cast<A*>(tm.list[1]) + e : nullptr;
        A* mo = K::has_momentum() ? static_cast<A*>(tm.list[2]) + e : nullptr;
        float vp = Io<P>::load1(p);
        float va = K::has_anchor() ? Io<A>::load1(a) : 0.f;
        float vm = K::has_momentum() ? Io<A>::load1(mo) : 0.f;
        const float vr = reads_reduced ? quant::decode(op.reduced[f], rs) : 0.f;
        float vs = K::has_sent() ? Io<float>::load1(op.sent + f) : 0.f;
        apply_rule(cfg, op.lr, op.mu, op.divisor, vp, va, vm, vr, vs, o[j]);
        if constexpr (K::write_anchors()) Io<A>::store1(a, va);
        if constexpr (K::write_anchors() && K::has_momentum()) Io<A>::store1(mo, vm);
        Io<P>::store1(p, vp);
        m = quant::absmax_join(m, o[j]);
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
        m = quant::absmax_join(m, __shfl_xor_sync(0xffffffffu, m, off));
      if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
      __syncthreads();
#pragma unroll
      for (int w = 0; w < kWarps; ++w) m = quant::absmax_join(m, warp_max[w]);
      const float scale = quant::scale_of<C>(m);
      if (threadIdx.x == 0) op.out_scales[b] = scale;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int64_t f = b * quant::kBlock + j * kQThreads + threadIdx.x;
        if (f >= total) continue;
        const C c = quant::encode<C>(o[j], scale);
        op.out[f] = c;
        if constexpr (K::has_sent()) Io<float>::store1(op.sent + f, quant::decode(c, scale));
      }
      __syncthreads();  // warp_max is rewritten by the next block
    }
  };
  if constexpr (Cfg::has_reduced()) {
    if (discard) return run(typename Cfg::Discarding{});
  }
  run(Cfg{});
}

// Calls f(QuantizedStep<...>{}) with the quantized Plan's kernel: round_step's
// variants (anchors, out and params always; reduced, sent and momentum as given).
template <class F>
void dispatch_quantized(const Plan& pl, F&& f) {
  dispatch_variant(pl, false, [&](auto cfg) {
    using Cfg = std::decay_t<decltype(cfg)>;
    if constexpr (Cfg::has_anchor() && Cfg::has_out() && Cfg::write_params()) {
      dispatch_param_anchor(pl, [&](auto p, auto a) {
        dispatch_codes(pl, [&](auto c) {
          f(QuantizedStep<Cfg, std::decay_t<decltype(p)>, std::decay_t<decltype(a)>,
                          std::decay_t<decltype(c)>>{});
        });
      });
    } else {
      HPSGD_CHECK(false, "hpsgd: an 8-bit wire is round_step's only (internal error)");
    }
  });
}

template <class Op>
struct KernelOf;
template <class Cfg, typename P, typename A, typename C>
struct KernelOf<QuantizedStep<Cfg, P, A, C>> {
  static constexpr auto value = &quantized_step_kernel<Cfg, P, A, C>;
};

// Grid: up to a few waves of resident blocks, then grid-stride.
int64_t grid_for(int64_t nb) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>(nb, int64_t{sms} * 16));
}

}  // namespace

void prepare_quantized(Plan& pl, const MultiTensorLayout& layout) {
  std::shared_ptr<Launch> l = upload_metas(layout, pl.total, pl.device);
  c10::cuda::CUDAGuard guard(pl.device);
  l->grid = grid_for(quant::num_blocks(pl.total));
  pl.prepared = l;
}

void run_quantized(const Plan& pl, const CallScalars& sc) {
  const auto& launch = *static_cast<const Launch*>(pl.prepared.get());
  c10::cuda::CUDAGuard guard(pl.device);
  dispatch_quantized(pl, [&](auto op) {
    using Op = decltype(op);
    using C = std::remove_pointer_t<decltype(op.out)>;
    op.out = static_cast<C*>(pl.out);
    op.reduced = static_cast<const C*>(pl.reduced);
    op.out_scales = pl.out_scales;
    op.reduced_scales = pl.reduced_scales;
    op.sent = static_cast<float*>(pl.sent);
    op.verdict = pl.verdict;
    op.lr = sc.lr;
    op.mu = sc.mu;
    op.divisor = sc.divisor;
    op.nesterov = sc.nesterov;
    KernelOf<Op>::value<<<static_cast<unsigned>(launch.grid), kQThreads, 0,
                          at::cuda::getCurrentCUDAStream(pl.device.index())>>>(
        launch.dev, launch.n, launch.total, op);
    HPSGD_LAUNCH_CHECK();
  });
}

std::vector<KernelInfo> quantized_kernels() {
  // Every kernel run_quantized can launch, found through the same dispatch.
  std::vector<KernelInfo> out;
  std::set<const void*> seen;
  static char dummy;
  const at::ScalarType params[] = {at::kFloat, at::kBFloat16, at::kHalf};
  for (int shape = 0; shape < 6; ++shape)
    for (at::ScalarType p : params)
      for (at::ScalarType a : {p, at::kFloat})
        for (at::ScalarType c : {at::kChar, at::kFloat8_e4m3fn}) {
          Plan pl;
          pl.cfg.anchor = true;
          pl.cfg.reduced = shape >= 2;
          pl.cfg.sent = shape % 2 == 1;
          pl.has_momenta = shape >= 4;
          pl.out = &dummy;
          pl.write_params = true;
          pl.quantized = true;
          pl.param_dtype = p;
          pl.anchor_dtype = a;
          pl.flat_dtype = c;
          dispatch_quantized(pl, [&](auto op) {
            const void* k = reinterpret_cast<const void*>(KernelOf<decltype(op)>::value);
            if (!seen.insert(k).second) return;
            out.push_back(kernel_info("quantized_step[" + std::to_string(shape) + "] p=" +
                                          std::string(c10::toString(p)) + " a=" +
                                          c10::toString(a) + " c=" + c10::toString(c),
                                      KernelOf<decltype(op)>::value, kQThreads));
          });
        }
  return out;
}

}  // namespace cuda
}  // namespace hpsgd
