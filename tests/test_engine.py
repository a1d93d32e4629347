"""The round engine (hpsgd_ext._C.Engine) driven directly, on one rank, as the hook
drives it; its argument errors; and link emulation as a communicator policy
(hpsgd_ext.emulation), outside HPSGD's constructor. The engine over two processes,
without Python, is tests/cpp/test_engine.cpp (ctest)."""

from __future__ import annotations

import datetime as dt

import pytest
import torch
import torch.distributed as dist
from torch import nn

from hpsgd_ext import HPSGD, Communicator, LinkModel, _C
from hpsgd_ext.emulation import EmulatedLink

pytestmark = pytest.mark.usefixtures("world_of_one")


def engine(tensors, comm, sync_every=2, **kw):
    args = dict(control=None, sync_every=sync_every, keep=True, check_finite=True, max_bad_rounds=3,
                comm_dtype_name="torch.float32", timeout=10.0)
    args.update(kw)
    return _C.Engine([(tensors, torch.float32, 1.0, 0.0, False, 0)], comm._live(), **args)


def test_engine_counts_steps_and_rounds_and_merges_on_one_rank():
    w = torch.zeros(5)
    with Communicator(timeout=10) as comm:
        e = engine([w], comm, sync_every=2)
        due = []
        for s in range(6):
            w.add_(1.0)  # the "optimizer"
            due.append(e.step())
            if due[-1]:
                e.boundary()
        assert due == [False, True] * 3
        c = e.counters()
        assert (c["rounds"], c["local_steps"], c["steps_in_window"]) == (3, 6, 0)
        assert e.pending and not e.in_sync
        # one rank: the global model is a round behind, the replica keeps its progress
        assert torch.equal(e.anchors(0)[0], torch.full((5,), 4.0))
        assert torch.equal(w, torch.full((5,), 6.0))
        e.quiesce()
        assert e.take_warnings() == []
        e.close()
        with pytest.raises(RuntimeError, match="closed"):
            e.step()


def test_engine_skipped_steps_count_toward_the_window():
    w = torch.zeros(3)
    with Communicator(timeout=10) as comm:
        e = engine([w], comm, sync_every=2)
        assert not e.step(skipped=True)
        assert e.step()
        c = e.counters()
        assert (c["local_steps"], c["skipped_steps"]) == (1, 1)
        e.close()


def test_engine_synchronize_needs_a_control_group():
    w = torch.zeros(3)
    with Communicator(timeout=10) as comm:
        e = engine([w], comm)
        with pytest.raises(RuntimeError, match="control process group"):
            e.synchronize()
        e.close()


@pytest.mark.parametrize("kw,match", [
    ({"sync_every": -1}, "sync_every is -1"),
    ({"max_bad_rounds": 0}, "max_bad_rounds is 0"),
    ({"timeout": float("inf")}, "timeout is inf"),
])
def test_engine_bad_arguments_name_the_argument(kw, match):
    with Communicator(timeout=10) as comm:
        with pytest.raises(ValueError, match=match):
            engine([torch.zeros(3)], comm, **kw)


def test_engine_refuses_no_groups_and_mixed_devices_or_dtypes():
    with Communicator(timeout=10) as comm:
        core = comm._live()
        kw = dict(control=None, sync_every=1, keep=True, check_finite=True, max_bad_rounds=3,
                  comm_dtype_name="", timeout=10.0)
        with pytest.raises(ValueError, match="groups is empty"):
            _C.Engine([], core, **kw)
        with pytest.raises(ValueError, match="mixes dtypes"):
            _C.Engine([([torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16)], torch.float32, 1.0, 0.0, False, 0)],
                      core, **kw)


def test_auto_window_bad_arguments_name_the_argument():
    from hpsgd_ext.window import AutoWindow

    with pytest.raises(ValueError, match="budget is 0"):
        AutoWindow(count_background_cpu=False, budget=0.0)
    with pytest.raises(ValueError, match="min_window is 0"):
        AutoWindow(count_background_cpu=False).min_window = 0


def test_emulated_link_is_a_communicator_policy_outside_the_constructor():
    torch.manual_seed(0)
    m = nn.Linear(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    link = LinkModel(bandwidth=1e9, latency=0.0)
    hp = HPSGD(m, opt, sync_every=1, communicator=EmulatedLink(link), timeout=dt.timedelta(seconds=10))
    assert hp.comm.link is link
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    hp.synchronize()
    assert hp.stats()["rounds"] == 2
    hp.close()
    assert hp.comm.error is None  # HPSGD built it, HPSGD closed it
    with pytest.raises(RuntimeError, match="closed"):
        hp.comm.stats()


def test_link_is_no_longer_an_hpsgd_argument_and_emulated_link_checks_its_link():
    m = nn.Linear(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="link"):
        HPSGD(m, opt, link=LinkModel(bandwidth=1e9, latency=0.0))
    with pytest.raises(TypeError, match="EmulatedLink: link is tuple"):
        EmulatedLink((1e9, 0.0))
    with pytest.raises(TypeError, match="communicator is str"):
        HPSGD(m, opt, communicator="fast")
    assert dist.is_initialized()


def test_boundary_calls_fused_ops_only():
    """The verdict and each group's flag are one op each (docs/round-protocol.md,
    "Verdict kernels"), into buffers the engine made once: a boundary runs no ATen op
    (it ran about 110 per group when they were composed from ATen ops)."""
    from torch.profiler import ProfilerActivity, profile

    ws = [torch.zeros(5), torch.zeros(7)]
    with Communicator(timeout=10) as comm:
        e = _C.Engine([([ws[0]], torch.float32, 1.0, 0.0, False, 0),
                       ([ws[1]], torch.bfloat16, 1.0, 0.0, False, 0)], comm._live(), control=None,
                      sync_every=1, keep=True, check_finite=True, max_bad_rounds=3,
                      comm_dtype_name="torch.bfloat16", timeout=10.0)
        for _ in range(2):
            assert e.step()
            e.boundary()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(4):
                for w in ws:
                    w.add_(1.0)
                assert e.step()
                e.boundary()
        e.quiesce()
        e.close()
    names = []

    def walk(ev):
        for c in ev.cpu_children:
            names.append(c.name)
            walk(c)

    bounds = [ev for ev in prof.events() if ev.name == "hpsgd.boundary"]
    assert len(bounds) == 4
    for ev in bounds:
        walk(ev)
    assert [n for n in names if n.startswith("aten::")] == []
    assert names.count("hpsgd::reduced_verdict") == 4 and names.count("hpsgd::own_flag") == 8
