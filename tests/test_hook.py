"""HPSGD on one rank (a world of one over Gloo, in this process): arguments, the
hook's accounting, and the training-loop features it must coexist with."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

import hpsgd_ext
from hpsgd_ext import HPSGD


pytestmark = pytest.mark.usefixtures("world_of_one")


def model_opt(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 10)] + ([nn.BatchNorm1d(10)] if bn else []) + [nn.ReLU(), nn.Linear(10, 2)]
    m = nn.Sequential(*layers)
    return m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)


def step(m, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 2, (8,), generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"sync_every": 0}, ValueError, "sync_every is 0"),
    ({"sync_every": "often"}, ValueError, "sync_every is 'often'"),
    ({"replica": "merge"}, ValueError, "replica is 'merge'"),
    ({"comm_dtype": torch.int16}, TypeError,
     "comm_dtype is torch.int16; expected None, .*torch.int8 or torch.float8_e4m3fn"),
    ({"outer_momentum": 1.0}, ValueError, "outer_momentum"),
    ({"nesterov": True}, ValueError, "nesterov=True needs outer_momentum"),
    ({"outer_lr": float("nan")}, ValueError, "outer_lr"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"max_bad_rounds": 0}, ValueError, "max_bad_rounds"),
])
def test_bad_arguments(kwargs, exc, match):
    m, opt = model_opt()
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(exc, match=match):
        HPSGD(m, opt, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert not opt._optimizer_step_post_hooks  # no hook left behind


def test_bad_model_arguments():
    m, opt = model_opt()
    with pytest.raises(TypeError, match="optimizer"):
        HPSGD(m, "sgd")
    with pytest.raises(TypeError, match=r"model_or_params\[0\]"):
        HPSGD(["w"], opt)
    frozen = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to synchronise"):
        HPSGD(frozen, opt)
    with pytest.raises(TypeError, match="dtype torch.float64"):
        HPSGD(nn.Linear(3, 3).double(), opt)


def test_fixed_window_counts_and_stats():
    m, opt = model_opt()
    with HPSGD(m, opt, sync_every=3) as hp:
        for s in range(10):
            step(m, opt, s)
        st = hp.stats()
        assert (st["local_steps"], st["rounds"]) == (10, 3)
        assert st["steps_per_round"] == pytest.approx(10 / 3)
        hp.synchronize()
        st = hp.stats()
        assert st["rounds"] == 4 and st["synchronizations"] == 1
        n = sum(p.numel() for p in m.parameters())
        assert st["bytes_reduced"] == 4 * (n + 1) * 4  # 4 rounds of the segments + one flag per rank
        assert st["comm"]["issued"] == 4 and st["comm"]["completed"] == 4
    assert not opt._optimizer_step_post_hooks  # close() removed the hook


@pytest.mark.parametrize("dtype,comm_dtype,replica,outer_momentum,per_param", [
    # anchor (always float32) + two flats and `sent` ("keep") in the wire dtype + outer momentum (float32)
    (torch.float32, None, "keep", 0.0, 4 + 2 * 4 + 4),
    (torch.float32, None, "reset", 0.0, 4 + 2 * 4),
    (torch.float32, None, "keep", 0.9, 4 + 2 * 4 + 4 + 4),
    (torch.float32, torch.bfloat16, "keep", 0.0, 4 + 2 * 2 + 2),
    (torch.bfloat16, None, "keep", 0.0, 4 + 2 * 2 + 2),
    (torch.bfloat16, torch.float32, "reset", 0.9, 4 + 2 * 4 + 4),
])
def test_extra_bytes_per_param(dtype, comm_dtype, replica, outer_momentum, per_param):
    m, _ = model_opt()
    m = m.to(dtype)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    n = sum(p.numel() for p in m.parameters())
    wire = (comm_dtype or dtype).itemsize
    with HPSGD(m, opt, sync_every=2, replica=replica, comm_dtype=comm_dtype, outer_momentum=outer_momentum) as hp:
        st = hp.stats()
    flags = 2 * 1 * wire  # one flag slot per rank (a world of one) in each of the two flats
    assert st["extra_bytes"] == n * per_param + flags, st
    assert st["extra_bytes_per_param"] == pytest.approx(per_param + flags / n)
    by = st["extra_bytes_by_buffer"]
    assert by == {"anchors": 4 * n, "flats": 2 * (n + 1) * wire, "sent": n * wire if replica == "keep" else 0,
                  "momenta": 4 * n if outer_momentum else 0}
    assert hp.stats()["extra_bytes"] == st["extra_bytes"]  # after close(): the last values


@pytest.mark.parametrize("fragments,match", [(0, "fragments is 0; expected an int >= 1"),
                                             (True, "fragments is True"),
                                             (5, "fragments is 5; expected 1 to 4")])
def test_fragments_checked(fragments, match):
    m, opt = model_opt()  # four tensors
    with pytest.raises(ValueError, match=match):
        HPSGD(m, opt, fragments=fragments)
    HPSGD(m, opt, fragments=4).close()  # the optimizer is free again after a failed build


def test_fragments_rotate_and_share_their_flats():
    m, opt = model_opt()  # 60, 10, 20, 2 elements: fragments {60}, {10, 20, 2}
    with HPSGD(m, opt, sync_every=1, fragments=2) as hp:
        assert [g.fragment for g in hp.groups] == [0, 1]
        assert [g.names for g in hp.groups] == [["0.weight"], ["0.bias", "2.weight", "2.bias"]]
        by = hp.stats()["extra_bytes_by_buffer"]
        assert by["flats"] == 2 * (60 + 1) * 4  # two buffers of the larger fragment (+ a flag slot)
        sent = [hp.stats()["bytes_reduced"]]
        for s in range(4):
            step(m, opt, s)
            sent.append(hp.stats()["bytes_reduced"])
        # each boundary sends one fragment, in rotation
        assert [b - a for a, b in zip(sent, sent[1:])] == [61 * 4, 33 * 4, 61 * 4, 33 * 4]
        hp.synchronize()  # one final round per fragment
        assert hp.stats()["rounds"] == 6


def test_frozen_parameters_left_alone_and_buffers_synced():
    m, opt = model_opt(bn=True)
    m[0].weight.requires_grad_(False)
    hp = HPSGD(m, opt, sync_every=2)
    names = [n for g in hp.groups for n in g.names]
    assert "0.weight" not in names
    assert "1.running_mean" in names and "1.num_batches_tracked" not in names
    frozen = m[0].weight.detach().clone()
    for s in range(5):
        step(m, opt, s)
    hp.synchronize()
    assert torch.equal(m[0].weight, frozen)
    hp.close()


# 8-bit wires: what a round's codes round away is sent by the next one, so only the
# final round's rounding is left (int8 ~1e-4 here; fp8, 3 mantissa bits, up to 6e-3).
WIRE_TOLERANCE = {None: dict(rtol=1e-5, atol=1e-6), torch.int8: dict(rtol=1e-3, atol=5e-4),
                  torch.float8_e4m3fn: dict(rtol=1e-2, atol=1e-2)}


@pytest.mark.parametrize("comm_dtype,fragments", [(None, 1), (torch.int8, 1), (torch.float8_e4m3fn, 2)])
def test_single_rank_keep_equals_plain_training_after_synchronize(comm_dtype, fragments):
    """With one rank the mean change is one's own: keep-rule HPSGD must end where
    plain training ends (every change applied exactly once)."""
    m1, o1 = model_opt()
    m2, o2 = model_opt()
    hp = HPSGD(m1, o1, sync_every=3, replica="keep", comm_dtype=comm_dtype, fragments=fragments)
    for s in range(11):
        step(m1, o1, s)
        step(m2, o2, s)
    hp.synchronize()
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, **WIRE_TOLERANCE[comm_dtype])
    hp.close()


def test_gradscaler_skipped_step_is_not_a_local_step():
    m, opt = model_opt()
    hp = HPSGD(m, opt, sync_every=100)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(4, 6)
    loss = m(x).sum() * float("inf")  # non-finite gradients: the step is skipped
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert hp.stats()["local_steps"] == 0
    opt.zero_grad()
    scaler.scale(m(x).sum()).backward()
    scaler.step(opt)
    assert hp.stats()["local_steps"] == 1
    hp.close()


@pytest.mark.parametrize("opt_cls", ["adamw_foreach", "adamw_fused", "adam"])
def test_works_with_adam_clipping_scheduler_and_accumulation(opt_cls):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 2))
    opt = {"adamw_foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=True),
           "adamw_fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
           "adam": lambda p: torch.optim.Adam(p, lr=1e-2)}[opt_cls](m.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    hp = HPSGD(m, opt, sync_every=2, comm_dtype=torch.bfloat16)
    for s in range(6):
        for micro in range(2):  # gradient accumulation: one step per two micro-batches
            m(torch.randn(4, 6)).pow(2).mean().backward()
        nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()
    hp.synchronize()
    assert hp.stats()["local_steps"] == 6 and hp.stats()["rounds"] == 4
    assert all(torch.isfinite(p).all() for p in m.parameters())
    hp.close()


def test_compiled_model_and_bf16_autocast():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 2))
    cm = torch.compile(m, backend="eager")
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    hp = HPSGD(cm, opt, sync_every=2)
    assert len([n for g in hp.groups for n in g.names]) == 4
    for s in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = cm(torch.randn(4, 6)).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    hp.synchronize()
    assert hp.stats()["rounds"] == 3
    hp.close()


def test_auto_mode_single_rank_ends_windows_once_reduced():
    m, opt = model_opt()
    hp = HPSGD(m, opt)  # sync_every="auto"
    for s in range(5):
        step(m, opt, s)
    st = hp.stats()
    assert st["rounds"] >= 1 and st["local_steps"] == 5
    hp.synchronize()
    hp.close()


def test_state_dict_loads_weights_only_and_rejects_foreign(tmp_path):
    m, opt = model_opt()
    hp = HPSGD(m, opt, sync_every=2, outer_momentum=0.5)
    for s in range(3):
        step(m, opt, s)
    path = tmp_path / "hp.pt"
    torch.save(hp.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    assert sd["pending"] and sd["counters"]["local_steps"] == 3
    hp.load_state_dict(sd)
    with pytest.raises(ValueError, match="not an HPSGD state"):
        hp.load_state_dict({"foo": 1})
    other = dict(sd, options=dict(sd["options"], replica="reset"))
    with pytest.raises(ValueError, match="saved with options"):
        hp.load_state_dict(other)
    hp.close()


def test_truncated_or_partial_checkpoint_is_a_clear_error(tmp_path):
    m, opt = model_opt()
    hp = HPSGD(m, opt, sync_every=2)
    step(m, opt, 0)
    path = tmp_path / "hp.pt"
    torch.save(hp.state_dict(), path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError):  # torch's own reader names the damaged archive
        torch.load(tmp_path / "cut.pt", weights_only=True)
    sd = torch.load(path, weights_only=True)
    del sd["groups"]
    with pytest.raises(ValueError, match="incomplete HPSGD state"):
        hp.load_state_dict(sd)
    hp.close()


def test_profiler_labels_only_while_a_profiler_runs():
    from contextlib import nullcontext

    from hpsgd_ext.profiling import label

    assert isinstance(label("x"), nullcontext)  # no profiler: no RecordFunction scope
    m, opt = model_opt()
    with HPSGD(m, opt, sync_every=1) as hp:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(m, opt, 0)
            hp.synchronize()
        names = {e.name for e in prof.events()}
    assert {"hpsgd.boundary", "hpsgd.all_reduce_async", "hpsgd.synchronize"} <= names
