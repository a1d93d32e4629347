// The round engine driven from C++ alone, as a C++ user of the library would:
// two processes (fork), a FileStore, Gloo process groups made here, the c10d
// transport, a list of tensors, a fixed window. Checks that both ranks end bit
// for bit identical and equal to the rule (DESIGN.md section 2, "keep") written
// out here with ATen ops, and that a NaN on one rank skips that round on every
// rank, leaving the global model bitwise as it was.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "comm/transport_c10d.h"
#include "engine/engine.h"

namespace {

constexpr int kWorld = 2;
constexpr int64_t kH = 2;
constexpr double kTimeout = 20.0;
int failures = 0;

void expect(int rank, bool ok, const std::string& what) {
  std::printf("[rank %d] %s: %s\n", rank, ok ? "ok  " : "FAIL", what.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

c10::intrusive_ptr<c10d::ProcessGroup> gloo_group(const c10::intrusive_ptr<c10d::Store>& store,
                                                  const std::string& prefix, int rank) {
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
  auto opts = c10d::ProcessGroupGloo::Options::create(
      std::chrono::milliseconds(static_cast<int64_t>(kTimeout * 1000)));
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, kWorld, opts);
  auto pg = c10::make_intrusive<c10d::ProcessGroup>(prefixed, rank, kWorld);
  pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, backend);
  pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  return pg;
}

// The local optimizer: p -= 0.1 * g, with g the same on every process for (rank, step).
at::Tensor grad(int rank, int step, int64_t n) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 * rank + step + 1);
  return at::randn({n}, gen);
}

// Every rank's replica and the global model, kept in one process: the rule alone.
struct Reference {
  at::Tensor a;                   // anchor (global model)
  std::vector<at::Tensor> p, s;   // replicas, what each sent last
  at::Tensor reduced;             // R of the round in flight (undefined: none)

  void boundary() {
    std::vector<at::Tensor> d;
    for (int i = 0; i < kWorld; ++i) d.push_back(p[i] - a - s[i]);
    if (reduced.defined()) a = a + reduced;
    at::Tensor sum = at::zeros_like(a);
    for (int i = 0; i < kWorld; ++i) {
      p[i] = a + d[i];
      s[i] = d[i];
      sum = sum + d[i];
    }
    reduced = sum / kWorld;
  }
  void synchronize() {  // a final round, merged with p = a
    boundary();
    a = a + reduced;
    reduced = at::Tensor();
    for (int i = 0; i < kWorld; ++i) {
      p[i] = a.clone();
      s[i] = at::zeros_like(a);
    }
  }
};

at::Tensor flat(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> parts;
  for (const auto& t : ts) parts.push_back(t.detach().reshape({-1}));
  return at::cat(parts);
}

// Another rank's tensor, through the store: exact bytes, for bitwise checks.
at::Tensor exchange(c10d::Store& store, const std::string& key, int rank, const at::Tensor& mine) {
  const at::Tensor c = mine.contiguous();
  const auto* bytes = static_cast<const uint8_t*>(c.data_ptr());
  store.set(key + "/" + std::to_string(rank), std::vector<uint8_t>(bytes, bytes + c.nbytes()));
  std::vector<uint8_t> other = store.get(key + "/" + std::to_string(1 - rank));
  at::Tensor out = at::empty_like(c);
  std::memcpy(out.data_ptr(), other.data(), std::min(other.size(), static_cast<size_t>(out.nbytes())));
  return out;
}

bool bitwise_equal(const at::Tensor& x, const at::Tensor& y) {
  return x.sizes() == y.sizes() && std::memcmp(x.contiguous().data_ptr(), y.contiguous().data_ptr(),
                                               x.nbytes()) == 0;
}

void run_rank(int rank, const std::string& path) {
  auto store = c10::make_intrusive<c10d::FileStore>(path, kWorld);
  auto data = gloo_group(store, "data", rank);
  auto control = gloo_group(store, "control", rank);
  auto comm = hpsgd::comm::make_transport<hpsgd::comm::C10dTransport>(data, kTimeout);

  // The same initial model on every rank (DESIGN: HPSGD broadcasts rank 0's).
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  std::vector<at::Tensor> live = {at::randn({3, 5}, gen), at::randn({7}, gen)};
  const int64_t n = 22;
  Reference ref{flat(live), {flat(live), flat(live)}, {at::zeros({n}), at::zeros({n})}, {}};

  hpsgd::engine::EngineOptions opts;
  opts.sync_every = kH;
  opts.timeout_s = kTimeout;
  hpsgd::engine::Engine engine({{live, at::kFloat}}, comm, control, opts);

  auto local_step = [&](int step) {
    for (int i = 0; i < kWorld; ++i) ref.p[i] -= 0.1 * grad(i, step, n);
    at::Tensor g = grad(rank, step, n);
    live[0].reshape({-1}).sub_(0.1 * g.narrow(0, 0, 15));
    live[1].sub_(0.1 * g.narrow(0, 15, 7));
  };

  // 1. Seven steps of fixed windows of 2 (a partial last window), then synchronize().
  int step = 0;
  for (; step < 7; ++step) {
    local_step(step);
    if ((step + 1) % kH == 0) ref.boundary();
    engine.on_step();
    expect(rank, at::allclose(flat(live), ref.p[rank], 1e-5, 1e-6),
           "step " + std::to_string(step) + ": the replica follows the rule");
  }
  engine.synchronize();
  ref.synchronize();
  const at::Tensor model = flat(live);
  expect(rank, engine.counters().rounds == 4, "3 windows and the final round: 4 rounds");
  expect(rank, at::allclose(model, ref.a, 1e-5, 1e-6), "after synchronize(): the rule's global model");
  expect(rank, bitwise_equal(model, flat(engine.groups()[0].anchors)), "replica == global model");
  expect(rank, bitwise_equal(model, exchange(*store, "sync1", rank, model)),
         "both ranks bit for bit identical");

  // 2. Rank 1 poisons its replica: the round carrying it is skipped on every rank.
  const at::Tensor global_before = flat(engine.groups()[0].anchors).clone();
  for (int k = 0; k < 4; ++k, ++step) {
    local_step(step);
    if (rank == 1 && k == 1) live[0].reshape({-1})[0] = std::nan("");
    engine.on_step();  // boundary after k = 1 (sends the NaN) and k = 3 (discards it)
  }
  const at::Tensor global_after = flat(engine.groups()[0].anchors);
  expect(rank, bitwise_equal(global_before, global_after),
         "the poisoned round left the global model bitwise as it was");
  expect(rank, engine.verdicts().skipped_rounds == 1, "one round skipped, counted at once (CPU)");
  const auto warnings = engine.take_warnings();
  expect(rank,
         warnings.size() == 1 && warnings[0].find("rank 1 sent a non-finite change") != std::string::npos,
         "a warning names the rank");
  engine.synchronize();
  const at::Tensor healed = flat(live);
  expect(rank, at::isfinite(healed).all().item<bool>(), "finite after the next synchronize()");
  expect(rank, bitwise_equal(healed, exchange(*store, "sync2", rank, healed)),
         "both ranks bit for bit identical after the skip");

  // 3. An 8-bit wire from C++ (docs/round-protocol.md, "8-bit wires"): the same rule
  // with int8 codes on the wire; what the codes round away is sent again by "keep",
  // so the model stays within the codes' resolution of the float32 rule's.
  std::vector<at::Tensor> live8 = {model.narrow(0, 0, 15).reshape({3, 5}).clone(),
                                   model.narrow(0, 15, 7).clone()};
  Reference ref8{flat(live8), {flat(live8), flat(live8)}, {at::zeros({n}), at::zeros({n})}, {}};
  hpsgd::engine::Engine engine8({{live8, at::kChar}}, comm, control, opts);
  expect(rank, engine8.groups()[0].quantized() && engine8.groups()[0].sent.scalar_type() == at::kFloat,
         "an int8 group: codes and scales, sent in float32");
  for (int k = 0; k < 7; ++k, ++step) {
    for (int i = 0; i < kWorld; ++i) ref8.p[i] -= 0.1 * grad(i, step, n);
    at::Tensor g = grad(rank, step, n);
    live8[0].reshape({-1}).sub_(0.1 * g.narrow(0, 0, 15));
    live8[1].sub_(0.1 * g.narrow(0, 15, 7));
    if ((k + 1) % kH == 0) ref8.boundary();
    engine8.on_step();
  }
  engine8.synchronize();
  ref8.synchronize();
  const at::Tensor model8 = flat(live8);
  expect(rank, at::allclose(model8, ref8.a, 0.0, 5e-3), "8-bit: within the codes' resolution of the rule");
  expect(rank, !at::equal(model8, ref8.a), "8-bit: the codes changed the result (the wire is not ignored)");
  expect(rank, bitwise_equal(model8, exchange(*store, "sync3", rank, model8)),
         "8-bit: both ranks bit for bit identical");
  expect(rank, engine8.counters().bytes_reduced == 4 * (n + 4 * (1 + kWorld)),
         "8-bit: 4 rounds of n codes, one scale and the flag slots");
  comm->close();
}

}  // namespace

int main() {
  char path[] = "/tmp/hpsgd_test_engine_XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) {
    std::perror("mkstemp");
    return 1;
  }
  close(fd);
  unlink(path);  // FileStore creates it
  const pid_t child = fork();
  if (child < 0) {
    std::perror("fork");
    return 1;
  }
  const int rank = child == 0 ? 1 : 0;
  alarm(120);  // never hang CI: a lost peer ends the test
  try {
    run_rank(rank, path);
  } catch (const std::exception& e) {
    std::printf("[rank %d] FAIL: %s\n", rank, e.what());
    ++failures;
  }
  std::fflush(stdout);
  if (child == 0) _exit(failures == 0 ? 0 : 1);
  int status = 0;
  waitpid(child, &status, 0);
  unlink(path);
  const bool child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  std::printf("%d failure(s) on rank 0; rank 1 %s\n", failures, child_ok ? "passed" : "failed");
  return failures == 0 && child_ok ? 0 : 1;
}
