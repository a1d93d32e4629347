// Argument-check and CUDA/NCCL error macros. Every failure becomes a C++
// exception that pybind11/the dispatcher turns into a Python exception; nothing
// here ever aborts the process.
#pragma once

#include <c10/util/Exception.h>

// A user-facing argument error: raised as ValueError in Python.
#define HPSGD_CHECK_ARG(cond, ...) TORCH_CHECK_VALUE((cond), __VA_ARGS__)
// A wrong dtype: raised as TypeError in Python.
#define HPSGD_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE((cond), __VA_ARGS__)
// Something that can only be a bug or an environment failure: RuntimeError.
#define HPSGD_CHECK(cond, ...) TORCH_CHECK((cond), __VA_ARGS__)

#ifdef HPSGD_WITH_CUDA
#include <cuda_runtime_api.h>
#define HPSGD_CUDA_CHECK(expr)                                                 \
  do {                                                                         \
    cudaError_t hpsgd_err_ = (expr);                                           \
    TORCH_CHECK(hpsgd_err_ == cudaSuccess, "CUDA error at ", __FILE__, ":",    \
                __LINE__, " in ", #expr, ": ", cudaGetErrorString(hpsgd_err_)); \
  } while (0)
// Call after every kernel launch: launch-configuration errors surface here.
#define HPSGD_LAUNCH_CHECK() HPSGD_CUDA_CHECK(cudaGetLastError())
#endif

#ifdef HPSGD_WITH_NCCL
#include <nccl.h>
#define HPSGD_NCCL_CHECK(expr, ...)                                            \
  do {                                                                         \
    ncclResult_t hpsgd_res_ = (expr);                                          \
    TORCH_CHECK(hpsgd_res_ == ncclSuccess || hpsgd_res_ == ncclInProgress,     \
                "NCCL error at ", __FILE__, ":", __LINE__, " in ", #expr,      \
                ": ", ncclGetErrorString(hpsgd_res_), " (",                    \
                ncclGetLastError(nullptr), ") ", ##__VA_ARGS__);               \
  } while (0)
#endif
