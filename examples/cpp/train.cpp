// HPSGD from C++: a libtorch training loop on one rank of N, the ranks meeting
// in a c10d FileStore and talking over a c10d Gloo process group made here.
// Each rank trains its replica with local SGD steps on its own data; every
// `sync_every` steps a boundary runs the fused round_step op (DESIGN.md
// section 2, the "keep" rule) and hands this round's change to the
// communicator's asynchronous all-reduce, which overlaps the next window. At the
// end, synchronize(): the last round is merged and every replica becomes the
// global model. Each rank then checks, with an all-gather, that all ranks hold
// bit-identical parameters, and writes them (hex floats) for an outside check.
//
//   hpsgd_train --rank R --world N --store /tmp/store [--steps 60] [--sync-every 4] [--out f]
//   (examples/cpp/run_ranks.sh starts N of them)
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <hpsgd_ext/hpsgd_ext.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
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
  if (a.rank < 0 || a.world < 1 || a.store.empty() || a.sync_every < 1)
    throw std::invalid_argument("usage: hpsgd_train --rank R --world N --store PATH [--steps S] "
                                "[--sync-every H] [--out FILE]");
  return a;
}

// A c10d process group with a Gloo backend for CPU tensors, as
// torch.distributed.init_process_group("gloo") builds one.
c10::intrusive_ptr<c10d::ProcessGroup> gloo_group(const Args& a) {
  auto store = c10::make_intrusive<c10d::FileStore>(a.store, a.world);
  auto options = c10d::ProcessGroupGloo::Options::create_default(std::chrono::seconds(60));
  auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, a.rank, a.world, options);
  auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, a.rank, a.world);
  pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
  return pg;
}

at::Tensor flat_copy(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> parts;
  for (const auto& t : ts) parts.push_back(t.detach().reshape(-1));
  return at::cat(parts);
}

// HPSGD's boundary state for one dtype group (here: all parameters, float32),
// as hpsgd_ext/hook.py keeps it: anchors (the global model), two flat buffers
// (the round in flight, the one being filled) and what was last sent.
class Rounds {
 public:
  Rounds(std::vector<at::Tensor> params, std::shared_ptr<hpsgd::comm::Transport> comm)
      : params_(std::move(params)), comm_(std::move(comm)), world_(comm_->world()) {
    int64_t total = 0;
    for (const auto& p : params_) {
      anchors_.push_back(p.detach().clone());
      total += p.numel();
    }
    flats_ = {at::zeros({total}), at::zeros({total})};
    sent_ = at::zeros({total});
  }

  // End the window: merge the round in flight (one round stale), start this one.
  void boundary() {
    torch::NoGradGuard no_grad;
    std::optional<at::Tensor> reduced;
    if (inflight_) {
      inflight_->wait(std::nullopt);  // normally done already: it overlapped the window
      reduced = flats_[1 - fill_];
    }
    // d = p - a - N*sent; flats[fill] = d/N; a += reduced; p = a + d; sent = d/N.
    hpsgd::ops::round_step(params_, anchors_, reduced, flats_[fill_], /*lr=*/1.0,
                           /*momentum_buffers=*/std::nullopt, /*momentum=*/0.0,
                           /*nesterov=*/false, sent_, /*divisor=*/world_);
    inflight_ = comm_->all_reduce(flats_[fill_], /*average=*/false);  // a sum of d/N: the mean
    fill_ = 1 - fill_;
    ++rounds_;
  }

  // Collective: close the window, merge every round, every replica := global model.
  void synchronize() {
    boundary();
    torch::NoGradGuard no_grad;
    inflight_->wait(std::nullopt);
    const int last = 1 - fill_;
    // No `sent`: the replica becomes the global model; flats[fill] is scratch.
    hpsgd::ops::round_step(params_, anchors_, flats_[last], flats_[fill_], 1.0, std::nullopt, 0.0,
                           false, std::nullopt, world_);
    sent_.zero_();
    inflight_.reset();
  }

  int rounds() const { return rounds_; }
  const std::vector<at::Tensor>& anchors() const { return anchors_; }

 private:
  std::vector<at::Tensor> params_, anchors_;
  std::shared_ptr<hpsgd::comm::Transport> comm_;
  const int world_;
  std::vector<at::Tensor> flats_;
  at::Tensor sent_;
  std::shared_ptr<hpsgd::comm::Work> inflight_;
  int fill_ = 0, rounds_ = 0;
};

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  at::set_num_threads(1);
  auto pg = gloo_group(a);

  torch::manual_seed(a.rank);  // replicas start different on purpose...
  torch::nn::Sequential model(torch::nn::Linear(8, 32), torch::nn::ReLU(), torch::nn::Linear(32, 1));
  std::vector<at::Tensor> params = model->parameters();
  {
    torch::NoGradGuard no_grad;  // ...and start from rank 0's model, as HPSGD does
    for (auto& p : params) {
      std::vector<at::Tensor> one{p.data()};
      pg->broadcast(one)->wait();
    }
  }

  // The communicator over that process group (what hpsgd_ext.Communicator wraps).
  auto comm = std::make_shared<hpsgd::comm::C10dTransport>(pg, /*timeout_s=*/60.0, nullptr);
  comm->start_watchdog();
  Rounds rounds(params, comm);

  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.05).momentum(0.9));
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
    if ((step + 1) % a.sync_every == 0) rounds.boundary();
  }
  rounds.synchronize();

  // Every rank must now hold the same parameters, bit for bit, equal to the anchors.
  const auto mine = flat_copy(params);
  std::vector<std::vector<at::Tensor>> gathered(1);
  for (int r = 0; r < a.world; ++r) gathered[0].push_back(at::empty_like(mine));
  std::vector<at::Tensor> input{mine};
  pg->allgather(gathered, input)->wait();
  bool agree = at::equal(mine, flat_copy(rounds.anchors()));
  for (const auto& other : gathered[0]) agree = agree && at::equal(other, mine);

  std::printf("rank %d/%d: %d steps, %d rounds, loss %.4f -> %.4f, replicas identical: %s\n", a.rank,
              a.world, a.steps, rounds.rounds(), first_loss, last_loss, agree ? "yes" : "NO");
  if (!a.out.empty()) {
    std::ofstream f(a.out);
    const float* v = mine.data_ptr<float>();
    char buf[32];
    for (int64_t i = 0; i < mine.numel(); ++i) {
      std::snprintf(buf, sizeof buf, "%a\n", static_cast<double>(v[i]));
      f << buf;
    }
  }
  comm->close();
  const bool learned = last_loss < first_loss;
  return agree && learned ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "hpsgd_train: %s\n", e.what());
  return 2;
}
