// Everything a C++ program embedding hpsgd_ext uses: the fused ops, the
// communicator over a c10d ProcessGroup (Gloo, or any other c10d backend) and
// the round engine that drives both (hpsgd::engine::Engine: on_step() after
// each optimizer step, synchronize() to end with every replica equal).
// Installed by CMake (find_package(hpsgd_ext), target hpsgd_ext::hpsgd_ext);
// examples/cpp/train.cpp shows a libtorch training loop built on the engine.
#pragma once

#include <hpsgd_ext/ops.h>

#include <hpsgd_ext/comm/link_model.h>
#include <hpsgd_ext/comm/transport.h>
#include <hpsgd_ext/comm/transport_c10d.h>
#include <hpsgd_ext/comm/work.h>

#include <hpsgd_ext/engine/engine.h>
