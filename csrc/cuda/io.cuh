// Loads and stores of the float streams on the device, one element or a unit
// of kUnit at a time (16 bytes of float32, 8 of a 16-bit type), converting to
// and from float32, with the streaming hint (every byte is touched once).
// Shared by the multi-tensor kernels (boundary_cuda.cu) and the 8-bit step
// (quantized_step_cuda.cu).
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

static_assert(kUnit == 4, "a unit is one float4, or two 32-bit words of 16-bit pairs");

// Loads and stores of one element type, converting to and from float32.
template <typename T>
struct Io;

template <>
struct Io<float> {
  static __device__ __forceinline__ void load4(const float* p, float (&v)[kUnit]) {
    const float4 x = __ldcs(reinterpret_cast<const float4*>(p));
    v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
  }
  static __device__ __forceinline__ void store4(float* p, const float (&v)[kUnit]) {
    __stcs(reinterpret_cast<float4*>(p), make_float4(v[0], v[1], v[2], v[3]));
  }
  static __device__ __forceinline__ float load1(const float* p) { return __ldcs(p); }
  static __device__ __forceinline__ void store1(float* p, float v) { __stcs(p, v); }
};

// 16-bit types: 4 elements in one 8-byte access; a pair per 32-bit word, the
// lower address in the low half, converted two at a time.
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
  static __device__ __forceinline__ void load4(const T* p, float (&v)[kUnit]) {
    const uint2 u = __ldcs(reinterpret_cast<const uint2*>(p));
    const float2 lo = unpack(u.x), hi = unpack(u.y);
    v[0] = lo.x; v[1] = lo.y; v[2] = hi.x; v[3] = hi.y;
  }
  static __device__ __forceinline__ void store4(T* p, const float (&v)[kUnit]) {
    __stcs(reinterpret_cast<uint2*>(p), make_uint2(pack(v[0], v[1]), pack(v[2], v[3])));
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
