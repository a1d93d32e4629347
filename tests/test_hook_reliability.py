"""One-rank checks of issue 15: wrong wiring refused at construction, bad states
refused before anything is written, validation gaps, a usable object after close()."""

from __future__ import annotations

import datetime

import pytest
import torch
from torch import nn

from hpsgd_ext import HPSGD
from helpers import bitwise_equal
from test_hook import model_opt, step

pytestmark = pytest.mark.usefixtures("world_of_one")


# --- item 6: two HPSGD on one optimizer or model, an optimizer that does not own them ---
def test_second_hpsgd_on_the_same_optimizer_is_refused():
    m, opt = model_opt()
    with HPSGD(m, opt, sync_every=2):
        with pytest.raises(ValueError, match="optimizer already has an HPSGD"):
            HPSGD(m, opt, sync_every=2)
    with HPSGD(m, opt, sync_every=2):  # after close() it may be attached again
        pass


def test_second_hpsgd_on_the_same_parameters_is_refused():
    m, opt = model_opt()
    other = torch.optim.SGD(m.parameters(), lr=0.1)
    with HPSGD(m, opt, sync_every=2):
        with pytest.raises(ValueError, match=r"param '0\.weight' is already synchronised by another HPSGD"):
            HPSGD(m, other, sync_every=2)


def test_optimizer_that_does_not_own_the_parameters_is_refused():
    m, _ = model_opt()
    stranger = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"param '0\.weight' is not stepped by the optimizer"):
        HPSGD(m, stranger, sync_every=2)
    assert not stranger._optimizer_step_post_hooks


# --- item 9: load_state_dict validates everything before writing anything --------------
def _trained():
    m, opt = model_opt()
    hp = HPSGD(m, opt, sync_every=2, outer_momentum=0.5)
    for s in range(3):
        step(m, opt, s)
    return m, opt, hp


def _bad_states(sd):
    def edit(fn):
        import copy
        s = copy.deepcopy(sd)
        fn(s)
        return s

    def scalar_anchor(s):
        s["groups"][0]["anchors"][0] = torch.tensor(1.0)

    def no_anchors(s):
        s["groups"][0]["anchors"] = []

    def no_sent(s):
        del s["groups"][0]["sent"]

    def wrong_dtype(s):
        s["groups"][0]["anchors"][1] = s["groups"][0]["anchors"][1].double()

    def short_reduced(s):
        s["groups"][0]["reduced"] = s["groups"][0]["reduced"][:-1]

    def bad_momentum(s):
        s["groups"][0]["momenta"] = s["groups"][0]["momenta"][:1]

    def bad_replica(s):
        s["groups"][0]["replica"][0] = torch.zeros(3)

    return {name: edit(fn) for name, fn in [
        ("scalar anchor", scalar_anchor), ("no anchors", no_anchors), ("no sent", no_sent),
        ("anchor dtype", wrong_dtype), ("short reduced", short_reduced), ("momenta", bad_momentum),
        ("replica", bad_replica)]}


def test_bad_states_are_refused_and_nothing_is_written():
    m, opt, hp = _trained()
    good = hp.state_dict()
    params_before = [p.detach().clone() for p in m.parameters()]
    for name, bad in _bad_states(good).items():
        with pytest.raises(ValueError, match="HPSGD.load_state_dict"):
            hp.load_state_dict(bad)
        now = hp.state_dict()
        for g0, g1 in zip(good["groups"], now["groups"]):
            for key in ("anchors", "momenta", "replica"):
                assert all(bitwise_equal(a, b) for a, b in zip(g0[key], g1[key])), (name, key)
            assert bitwise_equal(g0["sent"], g1["sent"]), name
        assert all(bitwise_equal(a, b) for a, b in zip(params_before, m.parameters())), name
    hp.close()


# --- item 10: validation gaps, and close() ------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"outer_lr": 0.0}, "outer_lr is 0.0"),
    ({"outer_lr": -1.0}, "outer_lr is -1.0"),
    ({"timeout": float("inf")}, "timeout is inf"),
    ({"timeout": float("nan")}, "timeout is nan"),
    ({"timeout": datetime.timedelta.max}, "timeout"),
])
def test_more_bad_arguments(kwargs, match):
    m, opt = model_opt()
    with pytest.raises(ValueError, match=match):
        HPSGD(m, opt, **kwargs)
    assert not opt._optimizer_step_post_hooks


def test_after_close_stats_work_and_collectives_refuse():
    m, opt = model_opt()
    hp = HPSGD(m, opt, sync_every=2)
    for s in range(4):
        step(m, opt, s)
    hp.close()
    st = hp.stats()
    assert st["rounds"] == 2 and st["local_steps"] == 4 and st["closed"]
    for call in (hp.synchronize, hp.state_dict):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    hp.close()  # idempotent
    step(m, opt, 5)  # the hook is gone: plain training goes on
    assert hp.stats()["local_steps"] == 4
