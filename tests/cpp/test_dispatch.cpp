// Calls hpsgd ops through the dispatcher, as a C++ user of the library would,
// and checks the fused round against the rule written out with ATen ops.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "round_step_call.h"

#include <cstdio>
#include <optional>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

}  // namespace

int main() {
  const auto& round_step = hpsgd::round_step_op();
  auto flatten = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("hpsgd::flatten", "")
                     .typed<void(at::TensorList, const at::Tensor&)>();

  at::manual_seed(0);
  std::vector<at::Tensor> p = {at::randn({3, 5}), at::randn({7})};
  std::vector<at::Tensor> a = {at::randn({3, 5}), at::randn({7})};
  at::Tensor reduced = at::randn({22});
  at::Tensor sent = at::randn({22});
  at::Tensor out = at::full({22}, NAN);

  at::Tensor p0 = at::cat({p[0].flatten(), p[1]});
  at::Tensor a0 = at::cat({a[0].flatten(), a[1]});
  at::Tensor s0 = sent.clone();
  at::Tensor d = p0 - a0 - s0;
  at::Tensor a_new = a0 + 0.5 * reduced;

  round_step.call(p, a, reduced, out, 0.5, std::nullopt, 0.0, false, sent, 1, std::nullopt,
                  std::nullopt, std::nullopt);

  expect(at::allclose(out, d), "out = p - a - sent");
  expect(at::allclose(at::cat({a[0].flatten(), a[1]}), a_new), "a += lr * reduced");
  expect(at::allclose(at::cat({p[0].flatten(), p[1]}), a_new + d), "p = a + d (keep)");
  expect(at::equal(sent, out), "sent = d");

  at::Tensor flat = at::empty({22});
  flatten.call(p, flat);
  expect(at::equal(flat, at::cat({p[0].flatten(), p[1]})), "flatten concatenates");

  bool threw = false;
  try {
    flatten.call(p, at::empty({21}));
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("out has 21 elements") != std::string::npos;
  }
  expect(threw, "a short flat buffer raises a named error");

  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
