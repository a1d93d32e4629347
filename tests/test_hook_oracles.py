"""Oracles for HPSGD on one rank: results that a correct implementation must
reproduce exactly, chosen so that a small slip in the round bookkeeping shows.

With one rank the mean change is one's own, so keep-rule HPSGD with outer_lr=1
must end where plain training ends, however the loop is interrupted by
synchronize(). The auto window's step-time median is checked on a fake clock."""

from __future__ import annotations

import random
from statistics import median

import pytest
import torch
from torch import nn

from hpsgd_ext import HPSGD
from hpsgd_ext.window import AutoWindow

pytestmark = pytest.mark.usefixtures("world_of_one")


def model_opt(seed=0, bn_first=False):
    torch.manual_seed(seed)
    # BatchNorm on the input: its running statistics depend on the data only,
    # not on the parameters, so they have a plain-training oracle even when the
    # parameters do not (outer_lr != 1).
    layers = ([nn.BatchNorm1d(6)] if bn_first else []) + [nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 2)]
    m = nn.Sequential(*layers)
    return m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)


def step(m, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 6, generator=g) * 2 + 1, torch.randint(0, 2, (8,), generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()


def flat(m):
    return torch.cat([t.detach().reshape(-1) for t in m.parameters()])


def train_both(hp, m1, o1, m2, o2, seeds, must_end_mid_window):
    """One step on each model per seed. With ``must_end_mid_window``, keep going
    (at most 100 more steps) until the last step did not end a window, so that the
    next synchronize() closes a non-empty partial window (its delta is not zero)."""
    seeds = list(seeds)
    s = seeds[-1] + 1
    for seed in seeds:
        step(m1, o1, seed)
        step(m2, o2, seed)
    if must_end_mid_window:
        for _ in range(100):
            before = hp.stats()["rounds"]
            step(m1, o1, s)
            step(m2, o2, s)
            s += 1
            if hp.stats()["rounds"] == before:
                break
        else:
            raise AssertionError("every step ended a window")
    return s


# --- 1. an evaluate-then-continue loop ends where plain training ends -----------------------
@pytest.mark.parametrize("sync_every", [3, "auto"])
def test_keep_single_rank_evaluate_then_continue_equals_plain_training(sync_every):
    """train k, synchronize (evaluate), train m more, synchronize: on one rank,
    keep, outer_lr=1, no outer momentum, this is plain training of the same steps.
    The second phase starts from a replica equal to the global model, so whatever
    the first phase last sent must be forgotten by synchronize()."""
    m1, o1 = model_opt()
    m2, o2 = model_opt()
    hp = HPSGD(m1, o1, sync_every=sync_every, replica="keep", outer_lr=1.0, outer_momentum=0.0)
    # k = 7 and m = 5 are not multiples of 3: both synchronize() calls close a partial window
    nxt = train_both(hp, m1, o1, m2, o2, range(7), must_end_mid_window=sync_every == "auto")
    hp.synchronize()
    torch.testing.assert_close(flat(m1), flat(m2), rtol=0, atol=1e-6)
    rounds_first = hp.stats()["rounds"]
    train_both(hp, m1, o1, m2, o2, range(nxt, nxt + 5), must_end_mid_window=sync_every == "auto")
    hp.synchronize()
    st = hp.stats()
    assert st["synchronizations"] == 2 and st["rounds"] > rounds_first
    assert (flat(m2) - flat(model_opt()[0])).abs().max() > 1e-3  # training happened
    torch.testing.assert_close(flat(m1), flat(m2), rtol=0, atol=1e-6)
    hp.close()


# --- 2. buffers are averaged with lr 1, parameters with outer_lr ----------------------------
def test_buffers_are_never_scaled_by_outer_lr():
    m1, o1 = model_opt(bn_first=True)
    m2, o2 = model_opt(bn_first=True)
    hp = HPSGD(m1, o1, sync_every=3, replica="keep", outer_lr=0.5)
    for s in range(10):
        step(m1, o1, s)
        step(m2, o2, s)
    hp.synchronize()
    assert hp.stats()["rounds"] == 4
    bn1, bn2 = m1[0], m2[0]
    # the running statistics moved away from their initial values
    assert (bn2.running_mean.abs().max() > 0.1) and ((bn2.running_var - 1).abs().max() > 0.1)
    torch.testing.assert_close(bn1.running_mean, bn2.running_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(bn1.running_var, bn2.running_var, rtol=0, atol=1e-6)
    # ... while the parameters took half-size outer steps: not plain training
    assert (flat(m1) - flat(m2)).abs().max() > 1e-3
    hp.close()


# --- 3 (one-rank part). comm_dtype halves the bytes on the wire -----------------------------
def test_bf16_wire_reduces_exactly_half_the_bytes_of_fp32():
    reduced = {}
    for cdt in (torch.float32, torch.bfloat16, None):
        m, opt = model_opt(bn_first=True)
        hp = HPSGD(m, opt, sync_every=2, comm_dtype=cdt)
        for s in range(7):
            step(m, opt, s)
        hp.synchronize()
        st = hp.stats()
        assert st["rounds"] == 4
        reduced[cdt] = st["bytes_reduced"]
        hp.close()
    assert reduced[torch.float32] > 0
    assert reduced[None] == reduced[torch.float32]  # float32 model: None means float32
    assert 2 * reduced[torch.bfloat16] == reduced[torch.float32], reduced


# --- 4. a pause outside the loop is no step ---------------------------------------------------
HISTORY = 9


def drive_evaluate_loop(w: AutoWindow, cycles, rng, pause):
    """A fake-clock training loop: each cycle trains some steps (every step's
    seconds drawn from ``rng``, the reduction always landed), then synchronize()
    (its final boundary, then restart()), then an evaluation pause of ``pause``
    seconds outside the loop. After every boundary whose round follows another
    in-loop boundary, ``step_seconds`` must be the median of the last ``HISTORY``
    step durations measured inside the loop (hook to hook, never across a pause).
    Returns the number of such checks."""
    now, in_loop, mark, checks = 0.0, [], None, 0
    fresh = True  # no boundary since construction or restart(): the next one has no round to measure

    def boundary(steps):
        nonlocal fresh, checks
        w.round_ended(0.0, steps)
        if not fresh and in_loop:
            assert w.stats()["step_seconds"] == pytest.approx(median(in_loop[-HISTORY:]), rel=1e-12), \
                (w.stats(), in_loop[-HISTORY:])
            checks += 1
        fresh = False

    for steps_this_cycle in cycles:
        steps = 0
        for _ in range(steps_this_cycle):
            now += rng.uniform(1e-3, 3e-3)
            if mark is not None:
                in_loop.append(now - mark)
            steps += 1
            if w.should_end(now, steps, reduced=True):
                boundary(steps)
                steps = 0
            w.step_done(now)
            mark = now
        boundary(steps)  # synchronize(): the final round ...
        w.restart()      # ... then the window restarts
        fresh, mark = True, None
        now += pause     # evaluation, saving: time outside the loop
    return checks


@pytest.mark.parametrize("pause", [0.3, 0.5])
def test_auto_window_pause_after_synchronize_is_not_a_step(pause):
    # budget 1: every round is cheap, min_window stays 1 and every reduced step ends a window
    w = AutoWindow(count_background_cpu=False, budget=1.0, history=HISTORY)
    checks = drive_evaluate_loop(w, [12, 6, 3, 8, 2, 5, 9, 4] * 3, random.Random(0), pause)
    assert checks > 50
    assert w.stats()["step_seconds"] < 3e-3  # never near the pause


def test_auto_window_a_slower_phase_after_evaluation_sets_the_median():
    """Deterministic: 35 steps of 1 ms fill a history of 33, synchronize(), a
    0.4 s evaluation, then 17 steps of 2 ms (16 measured). The in-loop history is
    then 17 x 1 ms and 16 x 2 ms (median 1 ms); were the pause counted it would be
    16 x 1 ms, the pause and 16 x 2 ms (median 2 ms)."""
    w = AutoWindow(count_background_cpu=False, budget=1.0)  # history 33
    now, n = 0.0, 0
    for dt, count in ((1e-3, 35), (2e-3, 17)):
        for i in range(count):
            now += dt
            n += 1
            if w.should_end(now, n, reduced=True):
                w.round_ended(0.0, n)
                n = 0
            w.step_done(now)
        w.round_ended(0.0, n)  # synchronize()
        n = 0
        w.restart()
        now += 0.4
    assert w.stats()["step_seconds"] == pytest.approx(1e-3, rel=1e-9)


# --- 6 (premise). step post-hooks run in registration order -----------------------------------
def test_a_post_hook_registered_before_hpsgd_runs_before_its_boundary():
    """tests/oracle_workers.StepRecorder relies on it: registered before HPSGD, a
    post-hook sees the parameters the optimizer wrote, before the boundary moves them."""
    m, opt = model_opt()
    hp_ref, seen = [], []
    h1 = opt.register_step_post_hook(lambda *_: seen.append(("before", hp_ref[0].stats()["rounds"])))
    hp = HPSGD(m, opt, sync_every=1)
    hp_ref.append(hp)
    h2 = opt.register_step_post_hook(lambda *_: seen.append(("after", hp.stats()["rounds"])))
    step(m, opt, 0)
    assert seen == [("before", 0), ("after", 1)]
    h1.remove()
    h2.remove()
    hp.close()
