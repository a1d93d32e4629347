// Which access pattern moves the boundary's bytes fastest on this GPU: a
// standalone probe (plain CUDA, no torch; compiles in seconds) for choosing the
// shape of round_step's kernel (csrc/cuda/boundary_cuda.cu) inside a short lease.
//
// The traffic is round_step's keep rule in float32, per element: read p, a, r, s;
// write o, s, a, p (32 bytes). Every variant runs the same arithmetic over the
// same n elements and is checked against the first one; times are the median of
// 20 event-timed launches, as a fraction of a device copy of the same bytes.
//   nvcc -O3 -std=c++17 -arch=sm_90 -o stream_probe bench/cuda/stream_probe.cu
//   ./stream_probe [n_elements]
// Variants:
//  - pair8: 8 adjacent elements per thread per stream (two float4 side by side,
//    lanes 32 bytes apart: the present kernel's vector path);
//  - unitsU: 4 elements (one float4) per unit, lanes on consecutive units (each
//    warp access is 512 contiguous bytes), U units in flight per thread;
//  - misaligned flats (r, s, o one element off the 16-byte grid, as after an odd
//    tensor): scalarS (one element per access, S in flight: the present
//    misaligned path) against shuffleU (float4 accesses on the aligned grid; a
//    lane's unit spans two aligned chunks, the second is the next lane's first,
//    passed by __shfl_down_sync; stores compose each aligned chunk from this
//    lane's tail and the next lane's head, the warp's two edge lanes write their
//    partial chunks element by element).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                        \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

constexpr int kThreads = 256;

struct Bufs {
  float *p, *a, *r, *s, *o;  // r, s, o may be one element off the 16-byte grid
};

__device__ __forceinline__ void rule(float& p, float& a, float r, float& s, float& o) {
  const float d = p - a - 2.f * s;
  const float w = 0.5f * d;
  a = a + 0.7f * r;
  p = a + d;
  o = w;
  s = w;
}

// Each block owns a contiguous span of elements (as the real kernel does).
__device__ __forceinline__ void span_of(long n, long& lo, long& hi) {
  // A multiple of 4096 elements: whole warps and whole iterations of every variant.
  const long span = ((n + gridDim.x - 1) / gridDim.x + 4095) / 4096 * 4096;
  lo = min(n, static_cast<long>(blockIdx.x) * span);
  hi = min(n, lo + span);
}

template <bool kCs>
__device__ __forceinline__ float4 ld4(const float* p) {
  if constexpr (kCs) return __ldcs(reinterpret_cast<const float4*>(p));
  else return *reinterpret_cast<const float4*>(p);
}
template <bool kCs>
__device__ __forceinline__ void st4(float* p, float4 v) {
  if constexpr (kCs) __stcs(reinterpret_cast<float4*>(p), v);
  else *reinterpret_cast<float4*>(p) = v;
}

__device__ __forceinline__ float& at(float4& v, int j) { return reinterpret_cast<float*>(&v)[j]; }

// ---------------------------------------------------------------- aligned
template <int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) pair8(Bufs b, long n) {
  long lo, hi;
  span_of(n, lo, hi);
  for (long e = lo + 8L * threadIdx.x; e + 8 <= hi; e += 8L * kThreads) {
    float4 p[2], a[2], r[2], s[2], o[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      p[h] = ld4<true>(b.p + e + 4 * h);
      a[h] = ld4<true>(b.a + e + 4 * h);
      r[h] = ld4<true>(b.r + e + 4 * h);
      s[h] = ld4<true>(b.s + e + 4 * h);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int j = 0; j < 4; ++j) rule(at(p[h], j), at(a[h], j), at(r[h], j), at(s[h], j), at(o[h], j));
      st4<true>(b.o + e + 4 * h, o[h]);
      st4<true>(b.s + e + 4 * h, s[h]);
      st4<true>(b.a + e + 4 * h, a[h]);
      st4<true>(b.p + e + 4 * h, p[h]);
    }
  }
}

template <int U, int kMinBlocks, bool kCs>
__global__ void __launch_bounds__(kThreads, kMinBlocks) units(Bufs b, long n) {
  long lo, hi;
  span_of(n, lo, hi);
  for (long e0 = lo + 4L * threadIdx.x; e0 < hi; e0 += 4L * kThreads * U) {
    float4 p[U], a[U], r[U], s[U], o[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const long e = e0 + 4L * kThreads * u;
      if (e + 4 <= hi) {
        p[u] = ld4<kCs>(b.p + e);
        a[u] = ld4<kCs>(b.a + e);
        r[u] = ld4<kCs>(b.r + e);
        s[u] = ld4<kCs>(b.s + e);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const long e = e0 + 4L * kThreads * u;
      if (e + 4 > hi) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) rule(at(p[u], j), at(a[u], j), at(r[u], j), at(s[u], j), at(o[u], j));
      st4<kCs>(b.o + e, o[u]);
      st4<kCs>(b.s + e, s[u]);
      st4<kCs>(b.a + e, a[u]);
      st4<kCs>(b.p + e, p[u]);
    }
  }
}

// ---------------------------------------------------------------- misaligned flats
template <int S>
__global__ void __launch_bounds__(kThreads, 2) scalar(Bufs b, long n) {
  long lo, hi;
  span_of(n, lo, hi);
  for (long e0 = lo + threadIdx.x; e0 < hi; e0 += long{kThreads} * S) {
    float p[S], a[S], r[S], s[S], o[S];
#pragma unroll
    for (int j = 0; j < S; ++j) {
      const long e = e0 + long{kThreads} * j;
      if (e < hi) {
        p[j] = __ldcs(b.p + e);
        a[j] = __ldcs(b.a + e);
        r[j] = __ldcs(b.r + e);
        s[j] = __ldcs(b.s + e);
      }
    }
#pragma unroll
    for (int j = 0; j < S; ++j) {
      const long e = e0 + long{kThreads} * j;
      if (e >= hi) continue;
      rule(p[j], a[j], r[j], s[j], o[j]);
      __stcs(b.o + e, o[j]);
      __stcs(b.s + e, s[j]);
      __stcs(b.a + e, a[j]);
      __stcs(b.p + e, p[j]);
    }
  }
}

// Elements [e, e+4) of a stream that starts k elements past the 16-byte grid
// (base = aligned + k): aligned chunk c0 = aligned[e, e+4), c1 = the next lane's c0.
__device__ __forceinline__ float4 realign(float4 c0, float4 c1, int k) {
  switch (k) {
    case 1: return make_float4(c0.y, c0.z, c0.w, c1.x);
    case 2: return make_float4(c0.z, c0.w, c1.x, c1.y);
    case 3: return make_float4(c0.w, c1.x, c1.y, c1.z);
    default: return c0;
  }
}
__device__ __forceinline__ float4 shfl_down4(float4 v) {
  return make_float4(__shfl_down_sync(~0u, v.x, 1), __shfl_down_sync(~0u, v.y, 1),
                     __shfl_down_sync(~0u, v.z, 1), __shfl_down_sync(~0u, v.w, 1));
}
// Loads unit e of a misaligned stream whose aligned base is `g` (shift k): every
// lane loads its c0; c1 comes from the next lane, the warp's last lane loads it.
__device__ __forceinline__ float4 load_shifted(const float* g, long e, int k, bool last) {
  const float4 c0 = __ldcs(reinterpret_cast<const float4*>(g + e));
  float4 c1 = shfl_down4(c0);
  if (last) c1 = __ldcs(reinterpret_cast<const float4*>(g + e + 4));
  return realign(c0, c1, k);
}
// Stores unit e (values v) of a misaligned stream: this lane writes aligned chunk
// g[e+4, e+8) = its last k values, then the next lane's first 4-k; the warp's
// last lane writes only its own k, its first lane also its first 4-k at g[e+k..).
__device__ __forceinline__ void store_shifted(float* g, long e, int k, float4 v, bool first, bool last) {
  const float4 nx = shfl_down4(v);
  if (!last) __stcs(reinterpret_cast<float4*>(g + e + 4), realign(v, nx, 4 - k));
  // Element i of the unit lands at g[e + k + i]: i < 4 - k in chunk [e, e+4)
  // (the first lane's to write), the rest in chunk [e+4, e+8) (the last lane's).
#pragma unroll
  for (int i = 0; i < 4; ++i)
    if (i < 4 - k ? first : last) __stcs(g + e + k + i, at(v, i));
}

template <int U>
__global__ void __launch_bounds__(kThreads, 2) shuffled(Bufs b, long n, int k) {
  // b.r, b.s, b.o are the aligned bases; element i of the stream is base[i + k].
  long lo, hi;
  span_of(n, lo, hi);
  const int lane = threadIdx.x & 31;
  // Whole warps only (n and the span are multiples of 4 * 32 * kThreads here).
  for (long e0 = lo + 4L * threadIdx.x; e0 < hi; e0 += 4L * kThreads * U) {
    float4 p[U], a[U], r[U], s[U], o[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const long e = e0 + 4L * kThreads * u;
      p[u] = __ldcs(reinterpret_cast<const float4*>(b.p + e));
      a[u] = __ldcs(reinterpret_cast<const float4*>(b.a + e));
      r[u] = load_shifted(b.r, e, k, lane == 31);
      s[u] = load_shifted(b.s, e, k, lane == 31);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const long e = e0 + 4L * kThreads * u;
#pragma unroll
      for (int j = 0; j < 4; ++j) rule(at(p[u], j), at(a[u], j), at(r[u], j), at(s[u], j), at(o[u], j));
      store_shifted(b.o, e, k, o[u], lane == 0, lane == 31);
      store_shifted(b.s, e, k, s[u], lane == 0, lane == 31);
      __stcs(reinterpret_cast<float4*>(b.a + e), a[u]);
      __stcs(reinterpret_cast<float4*>(b.p + e), p[u]);
    }
  }
}

__global__ void copy4(const float4* __restrict__ x, float4* __restrict__ y, long n4) {
  for (long i = blockIdx.x * long{blockDim.x} + threadIdx.x; i < n4; i += long{gridDim.x} * blockDim.x)
    y[i] = x[i];
}

// ---------------------------------------------------------------- host
struct Host {
  long n;
  std::vector<float> p, a, r, s;
};

static void fill(Host& h) {
  h.p.resize(h.n), h.a.resize(h.n), h.r.resize(h.n), h.s.resize(h.n);
  unsigned x = 12345;
  auto rnd = [&] { x = x * 1664525u + 1013904223u; return (x >> 8) * (1.f / 16777216.f) - 0.5f; };
  for (long i = 0; i < h.n; ++i) h.p[i] = rnd(), h.a[i] = rnd(), h.r[i] = rnd(), h.s[i] = rnd();
}

struct Dev {
  float *p, *a, *r, *s, *o;  // r, s, o allocated with 8 floats of slack
  long n;
  void upload(const Host& h, int k) {
    CK(cudaMemcpy(p, h.p.data(), n * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(a, h.a.data(), n * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(r + k, h.r.data(), n * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(s + k, h.s.data(), n * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(o, 0, (n + 8) * 4));
  }
  std::vector<float> result(int k) const {  // p, a, s, o concatenated
    std::vector<float> out(4 * n);
    CK(cudaMemcpy(out.data(), p, n * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(out.data() + n, a, n * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(out.data() + 2 * n, s + k, n * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(out.data() + 3 * n, o + k, n * 4, cudaMemcpyDeviceToHost));
    return out;
  }
};

template <class Launch>
static float time_ms(Launch launch, int reps = 20) {
  cudaEvent_t t0, t1;
  CK(cudaEventCreate(&t0));
  CK(cudaEventCreate(&t1));
  launch();
  CK(cudaDeviceSynchronize());
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(t0));
    launch();
    CK(cudaEventRecord(t1));
    CK(cudaEventSynchronize(t1));
    float m = 0;
    CK(cudaEventElapsedTime(&m, t0, t1));
    ms.push_back(m);
  }
  std::sort(ms.begin(), ms.end());
  CK(cudaGetLastError());
  return ms[ms.size() / 2];
}

template <class K>
static int grid_for(K kernel, int sms) {
  int per = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, kernel, kThreads, 0));
  return per * sms;
}

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 124L << 20;  // GPT-2 small's elements
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, %d SMs, n = %ld elements, %.1f MB moved per call\n", prop.name, sms, n,
              32.0 * n / 1e6);
  Host h{n};
  fill(h);
  Dev d{};
  d.n = n;
  CK(cudaMalloc(&d.p, n * 4));
  CK(cudaMalloc(&d.a, n * 4));
  CK(cudaMalloc(&d.r, (n + 8) * 4));
  CK(cudaMalloc(&d.s, (n + 8) * 4));
  CK(cudaMalloc(&d.o, (n + 8) * 4));

  // The ceiling: a copy of the same bytes (half read, half written).
  float4 *cx, *cy;
  const long n4 = 4 * n / 4;  // 16 n bytes each way = 32 n bytes moved
  CK(cudaMalloc(&cx, n4 * 16));
  CK(cudaMalloc(&cy, n4 * 16));
  const float copy_ms = time_ms([&] { CK(cudaMemcpyAsync(cy, cx, n4 * 16, cudaMemcpyDeviceToDevice)); });
  const float kcopy_ms = time_ms([&] { copy4<<<sms * 8, kThreads>>>(cx, cy, n4); });
  std::printf("%-28s %8.3f ms %8.1f GB/s\n", "cudaMemcpy (ceiling)", copy_ms, 32.0 * n / copy_ms / 1e6);
  std::printf("%-28s %8.3f ms %8.1f GB/s %5.0f%%\n", "copy kernel float4", kcopy_ms, 32.0 * n / kcopy_ms / 1e6,
              100.0 * copy_ms / kcopy_ms);
  CK(cudaFree(cx));
  CK(cudaFree(cy));

  std::vector<float> want;
  auto run = [&](const char* name, int k, auto launch) {
    d.upload(h, k);
    launch();  // one call on fresh inputs: checked against the first variant
    CK(cudaDeviceSynchronize());
    CK(cudaGetLastError());
    std::vector<float> got = d.result(k);
    double err = 0;
    if (want.empty()) want = got;
    for (size_t i = 0; i < got.size(); ++i) err = std::max(err, double(std::fabs(got[i] - want[i])));
    const float ms = time_ms(launch);
    std::printf("%-28s %8.3f ms %8.1f GB/s %5.0f%%  max|diff| %.1e%s\n", name, ms, 32.0 * n / ms / 1e6,
                100.0 * copy_ms / ms, err, err > 0 ? "  WRONG" : "");
  };
  Bufs al{d.p, d.a, d.r, d.s, d.o};
  run("pair8 (present vector)", 0, [&] { pair8<2><<<grid_for(pair8<2>, sms), kThreads>>>(al, n); });
  run("units1", 0, [&] { units<1, 2, true><<<grid_for(units<1, 2, true>, sms), kThreads>>>(al, n); });
  run("units2", 0, [&] { units<2, 2, true><<<grid_for(units<2, 2, true>, sms), kThreads>>>(al, n); });
  run("units4", 0, [&] { units<4, 2, true><<<grid_for(units<4, 2, true>, sms), kThreads>>>(al, n); });
  run("units2, no .cs", 0, [&] { units<2, 2, false><<<grid_for(units<2, 2, false>, sms), kThreads>>>(al, n); });
  run("units1, 4 blocks/SM", 0, [&] { units<1, 4, true><<<grid_for(units<1, 4, true>, sms), kThreads>>>(al, n); });
  run("units2, 4 blocks/SM", 0, [&] { units<2, 4, true><<<grid_for(units<2, 4, true>, sms), kThreads>>>(al, n); });
  for (int k = 1; k <= 3; k += 2) {
    Bufs mis{d.p, d.a, d.r + k, d.s + k, d.o + k};
    Bufs base{d.p, d.a, d.r, d.s, d.o};
    char name[64];
    std::snprintf(name, sizeof(name), "k=%d scalar4 (present)", k);
    run(name, k, [&] { scalar<4><<<grid_for(scalar<4>, sms), kThreads>>>(mis, n); });
    std::snprintf(name, sizeof(name), "k=%d scalar8", k);
    run(name, k, [&] { scalar<8><<<grid_for(scalar<8>, sms), kThreads>>>(mis, n); });
    std::snprintf(name, sizeof(name), "k=%d shuffle1", k);
    run(name, k, [&] { shuffled<1><<<grid_for(shuffled<1>, sms), kThreads>>>(base, n, k); });
    std::snprintf(name, sizeof(name), "k=%d shuffle2", k);
    run(name, k, [&] { shuffled<2><<<grid_for(shuffled<2>, sms), kThreads>>>(base, n, k); });
  }
  return 0;
}
