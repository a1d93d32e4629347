"""torch.library.opcheck on every op, and round_step inside torch.compile(fullgraph=True)."""

from __future__ import annotations

import pytest
import torch

from hpsgd_ext import ops

from conftest import DEVICES


def samples(device):
    g = torch.Generator().manual_seed(0)

    def r(*s, dt=torch.float32):
        return torch.randn(*s, generator=g).to(dt).to(device)

    ps = [r(3, 4), r(5)]
    an = [r(3, 4), r(5)]
    ms = [r(3, 4), r(5)]
    yield torch.ops.hpsgd.flatten.default, (ps, r(19)), {}
    yield torch.ops.hpsgd.unflatten.default, (r(17), [r(3, 4), r(5)]), {}
    yield torch.ops.hpsgd.delta_flatten.default, (ps, an, r(17, dt=torch.bfloat16)), {}
    yield torch.ops.hpsgd.merge.default, ([r(3, 4), r(5)], [r(3, 4), r(5)], r(17)), {"lr": 0.5}
    yield torch.ops.hpsgd.round_step.default, ([r(3, 4), r(5)], [r(3, 4), r(5)], None, r(17)), {}
    yield (torch.ops.hpsgd.round_step.default,
           ([r(3, 4), r(5)], [r(3, 4), r(5)], r(17), r(17)),
           {"lr": 0.7, "momentum_buffers": ms, "momentum": 0.9, "nesterov": True, "sent": r(17)})
    yield torch.ops.hpsgd.own_flag.default, (r(19, dt=torch.float16), 17, 1, 2), {}
    yield (torch.ops.hpsgd.reduced_verdict.default,
           ([r(19), r(9, dt=torch.bfloat16)], [17, 7], 2, torch.ones(1, device=device),
            torch.empty(3, device=device)), {})
    for v in (1.0, 0.0):  # merged and discarded, pre-divided wire
        yield (torch.ops.hpsgd.round_step.default,
               ([r(3, 4), r(5)], [r(3, 4), r(5)], r(17, dt=torch.float16), r(17, dt=torch.float16)),
               {"lr": 0.7, "momentum_buffers": [r(3, 4), r(5)], "momentum": 0.9,
                "sent": r(17, dt=torch.float16), "divisor": 4,
                "verdict": torch.tensor([v], device=device)})


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args, kwargs in samples(device):
        torch.library.opcheck(op, args, kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_round_step_matches_eager(device):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)

    def make():
        g.manual_seed(1)
        ps = [torch.randn(64, 3, generator=g).to(device), torch.randn(7, generator=g).to(device)]
        an = [torch.randn(64, 3, generator=g).to(device), torch.randn(7, generator=g).to(device)]
        ms = [torch.zeros(64, 3, device=device), torch.zeros(7, device=device)]
        red = torch.randn(199, generator=g).to(device)
        sent = torch.randn(199, generator=g).to(device)
        verdict = torch.ones(1, device=device)
        return ps, an, ms, red, torch.empty(199, device=device), sent, verdict

    def boundary(ps, an, ms, red, out, sent, verdict):
        ops.round_step(ps, an, red, out, lr=0.5, momentum_buffers=ms, momentum=0.9, sent=sent,
                       divisor=3, verdict=verdict)
        return out * 2  # a consumer after the op, so ordering matters

    eager = make()
    e_res = boundary(*eager)
    comp = make()
    c_res = torch.compile(boundary, fullgraph=True)(*comp)
    torch.testing.assert_close(c_res, e_res)
    for xs, ys in zip(comp, eager):
        for x, y in zip(xs if isinstance(xs, list) else [xs], ys if isinstance(ys, list) else [ys]):
            torch.testing.assert_close(x, y)
