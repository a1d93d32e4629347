// Loads and stores of the float streams on the device, one element or a
// 16-byte group of kVec at a time, converting to and from float32, with the
// streaming hint (every byte is touched once). Shared by the multi-tensor
// kernels (boundary_cuda.cu) and the 8-bit step (quantized_step_cuda.cu).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "multi_tensor_apply.cuh"

namespace hpsgd {
namespace cuda {

// Loads and stores of one element type, converting to and from float32.
template <typename T>
struct Io;

template <>
struct Io<float> {
  static __device__ __forceinline__ void load8(const float* p, float (&v)[kVec]) {
    const float4 x = __ldcs(reinterpret_cast<const float4*>(p));
    const float4 y = __ldcs(reinterpret_cast<const float4*>(p) + 1);
    v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
    v[4] = y.x; v[5] = y.y; v[6] = y.z; v[7] = y.w;
  }
  static __device__ __forceinline__ void store8(float* p, const float (&v)[kVec]) {
    __stcs(reinterpret_cast<float4*>(p), make_float4(v[0], v[1], v[2], v[3]));
    __stcs(reinterpret_cast<float4*>(p) + 1, make_float4(v[4], v[5], v[6], v[7]));
  }
  static __device__ __forceinline__ float load1(const float* p) { return __ldcs(p); }
  static __device__ __forceinline__ void store1(float* p, float v) { __stcs(p, v); }
};

// 16-bit types: 8 elements in one 16-byte access; a pair per 32-bit word,
// the lower address in the low half.
template <typename T>
struct Io16 {
  static constexpr bool kBf16 = std::is_same_v<T, c10::BFloat16>;
  static __device__ __forceinline__ float2 unpack(uint32_t w) {
    if constexpr (kBf16) {
      return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
    } else {
      __half2 h;
      memcpy(&h, &w, sizeof(w));
      return __half22float2(h);
    }
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    uint32_t w;
    if constexpr (kBf16) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
      memcpy(&w, &h, sizeof(w));
    } else {
      const __half2 h = __floats2half2_rn(lo, hi);
      memcpy(&w, &h, sizeof(w));
    }
    return w;
  }
  static __device__ __forceinline__ void load8(const T* p, float (&v)[kVec]) {
    const uint4 u = __ldcs(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = unpack(w[k]);
      v[2 * k] = f.x;
      v[2 * k + 1] = f.y;
    }
  }
  static __device__ __forceinline__ void store8(T* p, const float (&v)[kVec]) {
    __stcs(reinterpret_cast<uint4*>(p),
           make_uint4(pack(v[0], v[1]), pack(v[2], v[3]), pack(v[4], v[5]), pack(v[6], v[7])));
  }
  static __device__ __forceinline__ float load1(const T* p) {
    const unsigned short u = __ldcs(reinterpret_cast<const unsigned short*>(p));
    if constexpr (kBf16) return __uint_as_float(static_cast<uint32_t>(u) << 16);
    else return __half2float(__ushort_as_half(u));
  }
  static __device__ __forceinline__ void store1(T* p, float v) {
    unsigned short u;
    if constexpr (kBf16) u = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    else u = __half_as_ushort(__float2half_rn(v));
    __stcs(reinterpret_cast<unsigned short*>(p), u);
  }
};
template <>
struct Io<c10::BFloat16> : Io16<c10::BFloat16> {};
template <>
struct Io<c10::Half> : Io16<c10::Half> {};

}  // namespace cuda
}  // namespace hpsgd
