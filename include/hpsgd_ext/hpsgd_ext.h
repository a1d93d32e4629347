// Everything a C++ program embedding hpsgd_ext uses: the fused ops and the
// communicator over a c10d ProcessGroup (Gloo, or any other c10d backend).
// Installed by CMake (find_package(hpsgd_ext), target hpsgd_ext::hpsgd_ext);
// examples/cpp/train.cpp shows a training loop built on them.
#pragma once

#include <hpsgd_ext/ops.h>

#include <hpsgd_ext/comm/link_model.h>
#include <hpsgd_ext/comm/transport.h>
#include <hpsgd_ext/comm/transport_c10d.h>
#include <hpsgd_ext/comm/work.h>
// The round engine (csrc/engine/, in progress) adds its header here once it lands.
