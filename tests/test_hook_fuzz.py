"""HPSGD's constructor accepts exactly the valid arguments.

Validity rules (DESIGN.md section 4; one rule per argument):

* sync_every: "auto" or an int >= 1 (a bool is not an int here);
* replica: "keep" or "reset";
* comm_dtype: None, torch.float32, torch.bfloat16 or torch.float16;
* outer_lr: a finite number > 0;
* outer_momentum: a number in [0, 1);
* nesterov: a bool, True only with outer_momentum > 0;
* timeout: a positive finite number of seconds or timedelta (0, negative, inf
  and nan are rejected with a ValueError naming timeout);
* max_bad_rounds: an int >= 1 (not a bool);
* check_finite, sync_buffers: bools.

A valid set of arguments constructs (then closes); an invalid one raises
ValueError or TypeError whose message names an offending argument, and leaves the
model, the optimizer and its hooks as they were. Most fuzz examples are valid
(checked), so the accepting path is exercised as much as the rejecting one.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hpsgd_ext import HPSGD

pytestmark = pytest.mark.usefixtures("world_of_one")

ARGS = ("sync_every", "replica", "comm_dtype", "outer_lr", "outer_momentum", "nesterov", "timeout",
        "max_bad_rounds", "check_finite", "sync_buffers")

NAN, INF = float("nan"), float("inf")

VALID = {
    "sync_every": st.one_of(st.just("auto"), st.integers(1, 10**6)),
    "replica": st.sampled_from(["keep", "reset"]),
    "comm_dtype": st.sampled_from([None, torch.float32, torch.bfloat16, torch.float16, torch.int8,
                                   torch.float8_e4m3fn]),
    "outer_lr": st.one_of(st.floats(1e-6, 100.0), st.integers(1, 10)),
    "outer_momentum": st.one_of(st.just(0.0), st.just(0), st.floats(0.0, 1.0, exclude_max=True)),
    "nesterov": st.booleans(),  # True is made False below when outer_momentum == 0
    # (at least 1 s: a tiny deadline would fail the constructor's own collectives)
    "timeout": st.one_of(st.floats(1.0, 1e6), st.integers(1, 10**6),
                         st.floats(1.0, 1e6).map(lambda s: dt.timedelta(seconds=s))),
    "max_bad_rounds": st.integers(1, 1000),
    "check_finite": st.booleans(),
    "sync_buffers": st.booleans(),
}

INVALID = {
    "sync_every": [0, -1, -7, True, False, 2.0, 1.5, "often", "", "AUTO", None],
    "replica": ["merge", "", "KEEP", None, 1, True],
    "comm_dtype": [torch.int16, torch.int32, torch.float64, torch.float8_e5m2, "bf16", "float32", 16],
    "outer_lr": [0, 0.0, -0.5, -1, NAN, INF, -INF, None, "1"],
    "outer_momentum": [-0.1, -1, 1.0, 1, 1.5, NAN, INF, None, "0.9"],
    "nesterov": ["zero-momentum", 1, 0, "yes", None],  # "zero-momentum": True with outer_momentum 0
    "timeout": [0, 0.0, -1, -0.5, INF, NAN, -INF, dt.timedelta(0), dt.timedelta(seconds=-3), None, "5", True],
    "max_bad_rounds": [0, -1, True, False, 2.0, None, "3"],
    "check_finite": [1, 0, 1.0, "yes", None],
    "sync_buffers": [1, 0, 1.0, "yes", None],
}


def model_opt():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    # one step, so that the optimizer has state (momentum buffers) to compare
    nn.functional.cross_entropy(m(torch.randn(8, 6)), torch.randint(0, 2, (8,))).backward()
    opt.step()
    return m, opt


def snapshot(m, opt):
    return ({k: v.detach().clone() for k, v in m.state_dict().items()},
            {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()},
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
            len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks))


def assert_unchanged(before, after):
    (m0, s0, g0, pre0, post0), (m1, s1, g1, pre1, post1) = before, after
    assert m0.keys() == m1.keys() and all(torch.equal(m0[k], m1[k]) for k in m0)
    assert s0.keys() == s1.keys() and all(
        s0[i].keys() == s1[i].keys() and all(torch.equal(s0[i][k], s1[i][k]) for k in s0[i]) for i in s0)
    assert g0 == g1
    assert (pre1, post1) == (pre0, post0), "a hook was left behind"


def check(kwargs: dict, broken: set):
    """Construct with ``kwargs``; ``broken``: the arguments that break a rule."""
    m, opt = model_opt()
    before = snapshot(m, opt)
    if not broken:
        hp = HPSGD(m, opt, **kwargs)
        assert len(opt._optimizer_step_post_hooks) == before[4] + 1
        hp.close()
        assert_unchanged(before, snapshot(m, opt))  # one rank: the broadcast changes nothing
        return
    with pytest.raises((ValueError, TypeError)) as info:
        HPSGD(m, opt, **kwargs)
    msg = str(info.value)
    assert any(name in msg for name in broken), (broken, msg)
    if broken == {"timeout"}:
        assert info.type is ValueError, msg
    assert_unchanged(before, snapshot(m, opt))


@st.composite
def arguments(draw):
    # about 80% of examples break no rule, 10% one, 10% two (hypothesis skews draws,
    # so the test below asserts a looser "more than half")
    n_broken = draw(st.sampled_from([0] * 8 + [1] + [2]))
    broken = set(draw(st.lists(st.sampled_from(ARGS), min_size=n_broken, max_size=n_broken, unique=True)))
    kw = {a: draw(st.sampled_from(INVALID[a])) if a in broken else draw(VALID[a]) for a in ARGS}
    momentum_valid = "outer_momentum" not in broken
    if kw["nesterov"] == "zero-momentum":
        if momentum_valid:
            kw["nesterov"], kw["outer_momentum"] = True, 0.0
        else:
            kw["nesterov"] = 1
    elif "nesterov" not in broken and momentum_valid and kw["outer_momentum"] == 0:
        kw["nesterov"] = False
    return kw, broken


COUNTS: Counter = Counter()


@settings(max_examples=120, deadline=None)
@given(arguments())
def _fuzz(example):
    kwargs, broken = example
    COUNTS["valid" if not broken else "invalid"] += 1
    check(kwargs, broken)


def test_constructor_fuzz():
    """Most examples must take the accepting path (the old fuzz, in test_hook.py,
    had all of its 150 examples rejected, so it never tested acceptance): counted."""
    COUNTS.clear()
    _fuzz()
    total = COUNTS["valid"] + COUNTS["invalid"]
    # (every invalid value is also tried on its own by test_each_invalid_value_is_rejected)
    assert total >= 100 and COUNTS["valid"] > 0.5 * total and COUNTS["invalid"] >= 5, COUNTS


BASE = {"sync_every": 2, "replica": "keep", "comm_dtype": None, "outer_lr": 1.0, "outer_momentum": 0.5,
        "nesterov": False, "timeout": 30.0, "max_bad_rounds": 3, "check_finite": True, "sync_buffers": True}


@pytest.mark.parametrize("arg,value", [(a, v) for a in ARGS for v in INVALID[a]],
                         ids=lambda x: repr(x) if not isinstance(x, str) else x)
def test_each_invalid_value_is_rejected(arg, value):
    """The table behind the fuzz, one broken argument at a time (a readable list
    of what the constructor still accepts when it should not)."""
    kw = dict(BASE)
    if arg == "nesterov" and value == "zero-momentum":
        kw.update(nesterov=True, outer_momentum=0.0)
    else:
        kw[arg] = value
    check(kw, {arg})


@pytest.mark.parametrize("arg,value", [
    ("sync_every", "auto"), ("sync_every", 1), ("sync_every", 10**6), ("replica", "reset"),
    ("comm_dtype", torch.bfloat16), ("comm_dtype", torch.float16), ("comm_dtype", torch.float32),
    ("comm_dtype", torch.int8), ("comm_dtype", torch.float8_e4m3fn),
    ("outer_lr", 1e-6), ("outer_lr", 3), ("outer_momentum", 0.0), ("outer_momentum", 0.999),
    ("nesterov", True), ("timeout", dt.timedelta(hours=2)), ("timeout", 1), ("max_bad_rounds", 1),
    ("check_finite", False), ("sync_buffers", False)])
def test_each_valid_value_is_accepted(arg, value):
    kw = dict(BASE, **{arg: value})
    check(kw, set())

