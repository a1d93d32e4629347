// HPSGD from C++, as a framework embedding it would use it: a small libtorch
// model trained by torch::optim::SGD on one rank of N, with the round engine
// (hpsgd::engine::Engine, the same C++ object behind the Python HPSGD hook)
// built over the model's parameters. The ranks meet in a c10d FileStore and
// make two c10d Gloo process groups here, as the Python hook makes two of its
// own (docs/round-protocol.md, "Channels"):
//   data     rank 0's initial model (broadcast before the engine copies it as
//            the global model) and the rounds, through the c10d transport;
//   control  synchronize()'s agreement on the number of rounds, which must never
//            meet a round in flight.
// Each rank trains its replica on its own data. After every optimizer step,
// engine.on_step() counts the step; every `sync_every` steps it runs the
// boundary (DESIGN.md section 2, the "keep" rule): merge the previous round's
// averaged change, start this round's asynchronous all-reduce, which overlaps
// the next window. At the end, engine.synchronize(): the last round is merged
// and every replica becomes the global model. Each rank then checks, with an
// all-gather, that all ranks hold bit-identical parameters equal to the
// engine's global model, and writes them (hex floats) for an outside check.
//
//   hpsgd_train --rank R --world N --store /tmp/store [--steps 60] [--sync-every 4] [--out f]
//   (--sync-every 0: the auto window; examples/cpp/run_ranks.sh starts N of them)
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <hpsgd_ext/hpsgd_ext.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Args {
  int rank = -1, world = -1, steps = 60, sync_every = 4;
  std::string store, out;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--rank") a.rank = std::stoi(v);
    else if (k == "--world") a.world = std::stoi(v);
    else if (k == "--steps") a.steps = std::stoi(v);
    else if (k == "--sync-every") a.sync_every = std::stoi(v);
    else if (k == "--store") a.store = v;
    else if (k == "--out") a.out = v;
    else throw std::invalid_argument("unknown argument " + k);
  }
  if (a.rank < 0 || a.world < 1 || a.store.empty() || a.sync_every < 0)
    throw std::invalid_argument("usage: hpsgd_train --rank R --world N --store PATH [--steps S] "
                                "[--sync-every H (0: auto)] [--out FILE]");
  return a;
}

// A c10d process group with a Gloo backend for CPU tensors, as
// torch.distributed.new_group(backend="gloo") builds one; `prefix` keeps the
// groups made over one store apart.
c10::intrusive_ptr<c10d::ProcessGroup> gloo_group(const c10::intrusive_ptr<c10d::Store>& store,
                                                  const std::string& prefix, const Args& a) {
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
  auto options = c10d::ProcessGroupGloo::Options::create_default(std::chrono::seconds(60));
  auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, a.rank, a.world, options);
  auto pg = c10::make_intrusive<c10d::ProcessGroup>(prefixed, a.rank, a.world);
  pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
  return pg;
}

at::Tensor flat_copy(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> parts;
  for (const auto& t : ts) parts.push_back(t.detach().reshape(-1));
  return at::cat(parts);
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  at::set_num_threads(1);
  auto store = c10::make_intrusive<c10d::FileStore>(a.store, a.world);
  auto data = gloo_group(store, "data", a);
  auto control = gloo_group(store, "control", a);

  torch::manual_seed(a.rank);  // replicas start different on purpose...
  torch::nn::Sequential model(torch::nn::Linear(8, 32), torch::nn::ReLU(), torch::nn::Linear(32, 1));
  std::vector<at::Tensor> params = model->parameters();
  {
    torch::NoGradGuard no_grad;  // ...and start from rank 0's model, as the Python hook does
    for (auto& p : params) {
      std::vector<at::Tensor> one{p.data()};
      data->broadcast(one)->wait();
    }
  }

  // The communicator over the data group (what hpsgd_ext.Communicator wraps),
  // its watchdog running: a round past its 60 s deadline raises CommTimeout.
  auto comm = hpsgd::comm::make_transport<hpsgd::comm::C10dTransport>(data, /*timeout_s=*/60.0);
  // The engine over the parameters, one group (float32 on the wire, the plain
  // merge); it copies them now as the global model. Replica rule "keep".
  hpsgd::engine::EngineOptions options;
  options.sync_every = a.sync_every;  // a boundary every H steps; 0: the auto window
  options.timeout_s = 60.0;           // of synchronize()'s agreement on `control`
  hpsgd::engine::Engine engine({hpsgd::engine::GroupSpec{params}}, comm, control, options);

  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.05).momentum(0.9));  // its state stays local
  const auto w_true = torch::linspace(-1.0, 1.0, 8).reshape({8, 1});
  torch::Generator gen = at::detail::createCPUGenerator(1000 + a.rank);  // each rank its own data
  double first_loss = 0.0, last_loss = 0.0;
  for (int step = 0; step < a.steps; ++step) {
    auto x = at::randn({32, 8}, gen);
    auto y = at::matmul(x, w_true) + 0.01 * at::randn({32, 1}, gen);
    auto loss = torch::mse_loss(model->forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    (step == 0 ? first_loss : last_loss) = loss.item<double>();
    engine.on_step();  // the post-step hook: at a boundary, writes the parameters in place
    // A rank that sent a non-finite change is named here (Python: RuntimeWarning);
    // max_bad_rounds in a row raise hpsgd::engine::NonFiniteRounds.
    for (const auto& w : engine.take_warnings()) std::fprintf(stderr, "hpsgd_train: %s\n", w.c_str());
  }
  engine.synchronize();  // collective: every replica := the global model

  // Every rank must now hold the same parameters, bit for bit, equal to the
  // engine's global model (nothing is in flight on `data` after synchronize()).
  const auto mine = flat_copy(params);
  std::vector<std::vector<at::Tensor>> gathered(1);
  for (int r = 0; r < a.world; ++r) gathered[0].push_back(at::empty_like(mine));
  std::vector<at::Tensor> input{mine};
  data->allgather(gathered, input)->wait();
  bool agree = at::equal(mine, flat_copy(engine.groups()[0].anchors));
  for (const auto& other : gathered[0]) agree = agree && at::equal(other, mine);

  const auto& c = engine.counters();
  std::printf("rank %d/%d: %d steps, %lld rounds (%.3f s exposed), loss %.4f -> %.4f, "
              "replicas identical: %s\n",
              a.rank, a.world, a.steps, static_cast<long long>(c.rounds), c.exposed_seconds,
              first_loss, last_loss, agree ? "yes" : "NO");
  if (!a.out.empty()) {
    std::ofstream f(a.out);
    const float* v = mine.data_ptr<float>();
    char buf[32];
    for (int64_t i = 0; i < mine.numel(); ++i) {
      std::snprintf(buf, sizeof buf, "%a\n", static_cast<double>(v[i]));
      f << buf;
    }
  }
  engine.close();
  comm->close();
  const bool learned = last_loss < first_loss;
  return agree && learned ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "hpsgd_train: %s\n", e.what());
  return 2;
}
