// The argument checks every hpsgd op's front end shares (plan.cpp for the
// boundary ops, verdict_ops.cpp for the verdict's): one wording for one fault,
// whichever op finds it. Error text is built only when a check fails.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <ostream>
#include <vector>

namespace hpsgd {

bool is_supported_float(at::ScalarType t);

// An argument's name, "params[3]" or "out", formatted only when an error
// message is built: a passing call builds no strings.
struct Name {
  const char* list;
  int64_t index;  // -1: a flat argument
};
std::ostream& operator<<(std::ostream& os, const Name& n);
inline Name item(const char* name, int64_t i) { return {name, i}; }

// One tensor's structural checks: dense, contiguous, float, on `device`.
void check_tensor(const char* op, const at::Tensor& t, const Name& name, const at::Device& device);
// The same but any dtype (the caller checks it).
void check_layout(const char* op, const at::Tensor& t, const Name& name, const at::Device& device);
// An 8-bit wire's code dtypes (csrc/quant.h).
bool is_code_dtype(at::ScalarType t);

struct Range {
  uintptr_t begin, end;
  bool written;
  Name name;
};

void add_range(std::vector<Range>& ranges, const void* data, int64_t numel, int64_t elem,
               bool written, Name name);

// Every byte a call writes must belong to exactly one argument: otherwise the
// result would depend on the order the kernel happens to visit elements in.
// Sorted sweep, O(n log n): thousands of tensors stay cheap.
void check_no_overlap(const char* op, std::vector<Range>& ranges);

}  // namespace hpsgd
