"""Bad input: a clear exception naming the argument, raised before anything is written."""

from __future__ import annotations

import pytest
import torch

from hpsgd_ext import ops

from conftest import DEVICES
from helpers import assert_untouched, snapshot_tensors


def base(device="cpu", n=(4, 3)):
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(k, generator=g).to(device) for k in n]
    an = [torch.randn(k, generator=g).to(device) for k in n]
    ms = [torch.randn(k, generator=g).to(device) for k in n]
    tot = sum(n)
    return dict(params=ps, anchors=an, reduced=torch.randn(tot, generator=g).to(device),
                out=torch.randn(tot, generator=g).to(device), momentum_buffers=ms,
                sent=torch.randn(tot, generator=g).to(device))


def expect_error(exc, match, **kw):
    snap = snapshot_tensors(kw)
    with pytest.raises(exc, match=match):
        ops.round_step(**kw)
    assert_untouched(kw, snap)


@pytest.mark.parametrize("device", DEVICES)
def test_list_length_mismatch(device):
    kw = base(device)
    kw["anchors"] = kw["anchors"][:1]
    expect_error(ValueError, r"anchors has 1 tensors but params has 2", **kw)
    kw = base(device)
    kw["momentum_buffers"] = kw["momentum_buffers"][:1]
    expect_error(ValueError, r"momentum_buffers has 1 tensors", momentum=0.9, **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_shape_mismatch(device):
    kw = base(device)
    kw["anchors"][1] = torch.zeros(2, device=device)
    expect_error(ValueError, r"anchors\[1\] has shape \[2\] but params\[1\] has shape \[3\]", **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["params", "anchors", "out", "reduced", "sent"])
def test_integer_tensors_rejected(device, which):
    kw = base(device)
    if isinstance(kw[which], list):
        kw[which][0] = kw[which][0].to(torch.int64)
        name = rf"{which}\[0\]"
    else:
        kw[which] = kw[which].to(torch.int32)
        name = which
    expect_error(TypeError, rf"{name} has dtype (Long|Int); expected float32, bfloat16 or float16", **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_dtype_rules(device):
    kw = base(device)
    kw["params"][1] = kw["params"][1].half()
    expect_error(TypeError, r"params\[1\] has dtype Half but params\[0\] has Float", **kw)
    kw = base(device)
    kw["params"] = [p.bfloat16() for p in kw["params"]]
    kw["anchors"] = [a.half() for a in kw["anchors"]]
    expect_error(TypeError, r"anchors\[0\] has dtype Half with params\[0\] of dtype BFloat16", **kw)
    kw = base(device)
    kw["sent"] = kw["sent"].bfloat16()
    expect_error(TypeError, r"sent has dtype BFloat16 but another flat buffer", **kw)
    kw = base(device)
    kw["momentum_buffers"] = [m.half() for m in kw["momentum_buffers"]]
    expect_error(TypeError, r"momentum_buffers\[0\] has dtype Half", momentum=0.9, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["out", "reduced", "sent"])
def test_flat_too_short(device, which):
    kw = base(device)
    kw[which] = kw[which][:6]
    expect_error(ValueError, rf"{which} has 6 elements; expected at least 7", **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_overlaps_rejected(device):
    kw = base(device)
    kw["out"] = kw["reduced"]
    expect_error(ValueError, r"(out overlaps reduced|reduced overlaps out)", **kw)
    kw = base(device)
    kw["anchors"] = list(kw["params"])
    expect_error(ValueError, r"overlaps", **kw)
    kw = base(device)
    store = torch.randn(20, device=device)
    kw["params"] = [store[0:4], store[2:5]]  # two written params sharing elements
    expect_error(ValueError, r"params\[(0|1)\] overlaps params\[(0|1)\]", **kw)
    kw = base(device)
    store = torch.randn(20, device=device)
    kw["params"] = [store[0:4], store[4:7]]  # disjoint views of one storage are fine
    kw["out"] = store[7:14]
    ops.round_step(**kw)
    # an output inside an input that is only read is an overlap too
    kw = base(device)
    kw["out"] = kw["params"][0].new_empty(7)
    big = torch.randn(10, device=device)
    kw["reduced"] = big[:7]
    kw["sent"] = big[3:10]
    expect_error(ValueError, r"overlaps", **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_rejected(device):
    kw = base(device)
    kw["params"][0] = torch.randn(4, 2, device=device)[:, 0]
    expect_error(ValueError, r"params\[0\] is not contiguous", **kw)
    kw = base(device)
    kw["out"] = torch.randn(14, device=device)[::2]
    expect_error(ValueError, r"out is not contiguous", **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_scalar_options(device):
    kw = base(device)
    mb = kw.pop("momentum_buffers")
    expect_error(ValueError, r"needs momentum_buffers", momentum=0.9, **kw)
    expect_error(ValueError, r"needs momentum_buffers", nesterov=True, **kw)
    expect_error(ValueError, r"lr is nan", lr=float("nan"), **kw)
    expect_error(ValueError, r"momentum is -0.5", momentum=-0.5, momentum_buffers=mb, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("divisor", [0, -1, -(2**40)])
def test_bad_divisor(device, divisor):
    kw = base(device)
    expect_error(ValueError, rf"hpsgd.round_step: divisor is {divisor}; expected an integer >= 1",
                 divisor=divisor, **kw)
    expect_error(ValueError, rf"divisor is {divisor}", divisor=divisor,
                 verdict=torch.ones(1, device=device), **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_verdict(device):
    kw = base(device)
    kw["verdict"] = torch.ones(1, device=device)
    kw["reduced"] = None
    expect_error(ValueError, r"hpsgd.round_step: verdict is given but reduced is None", **kw)
    kw = base(device)
    expect_error(TypeError, r"verdict has dtype Double; expected float32",
                 verdict=torch.ones(1, dtype=torch.float64, device=device), **kw)
    expect_error(TypeError, r"verdict has dtype Int; expected float32",
                 verdict=torch.ones(1, dtype=torch.int32, device=device), **kw)
    expect_error(TypeError, r"verdict has dtype Half; expected float32",
                 verdict=torch.ones(1, dtype=torch.float16, device=device), **kw)
    expect_error(ValueError, r"verdict has 2 elements; expected exactly 1",
                 verdict=torch.ones(2, device=device), **kw)
    expect_error(ValueError, r"verdict has 0 elements; expected exactly 1",
                 verdict=torch.ones(0, device=device), **kw)
    # one element of any shape is fine
    ops.round_step(verdict=torch.ones(1, 1, device=device), **base(device))
    # read by the kernel while it writes: it must not alias an output
    kw = base(device)
    kw["verdict"] = kw["sent"][2:3]
    expect_error(ValueError, r"(verdict overlaps sent|sent overlaps verdict)", **kw)
    kw = base(device)
    kw["verdict"] = kw["params"][1][0:1]
    expect_error(ValueError, r"overlaps", **kw)


@pytest.mark.gpu
def test_verdict_on_another_device_rejected():
    kw = base("cuda")
    expect_error(ValueError, r"verdict is on cpu but the other tensors are on cuda:0",
                 verdict=torch.ones(1), **kw)
    kw = base("cpu")
    expect_error(ValueError, r"verdict is on cuda:0 but the other tensors are on cpu",
                 verdict=torch.ones(1, device="cuda"), **kw)


@pytest.mark.gpu
def test_mixed_devices_rejected():
    kw = base("cuda")
    kw["out"] = kw["out"].cpu()
    expect_error(ValueError, r"out is on cpu but the other tensors are on cuda:0", **kw)
    kw = base("cuda")
    kw["anchors"][1] = kw["anchors"][1].cpu()
    expect_error(ValueError, r"anchors\[1\] is on cpu", **kw)


def test_other_ops_name_their_arguments():
    ts = [torch.randn(3), torch.randn(2)]
    with pytest.raises(ValueError, match=r"hpsgd.flatten: out has 4 elements; expected at least 5"):
        ops.flatten(ts, torch.empty(4))
    with pytest.raises(ValueError, match=r"hpsgd.unflatten: flat has 4 elements"):
        ops.unflatten(torch.empty(4), ts)
    with pytest.raises(TypeError, match=r"hpsgd.unflatten: tensors\[0\] has dtype Long"):
        ops.unflatten(torch.empty(5), [torch.zeros(3, dtype=torch.long), torch.zeros(2)])
    with pytest.raises(ValueError, match=r"hpsgd.merge: anchors\[0\] has shape"):
        ops.merge(ts, [torch.randn(2), torch.randn(2)], torch.randn(5))
    with pytest.raises(ValueError, match=r"hpsgd.delta_flatten: anchors has 1"):
        ops.delta_flatten(ts, ts[:1], torch.empty(5))


def test_none_for_a_required_tensor_is_refused():
    """None for a non-optional tensor reaches C++ as an undefined tensor: it must
    raise, not run as if the output stream were absent."""
    p, a = [torch.randn(3)], [torch.randn(3)]
    p0 = p[0].clone()
    with pytest.raises(TypeError, match="round_step: out is None"):
        ops.round_step(p, a, None, None)
    assert torch.equal(p[0], p0)
    with pytest.raises(TypeError, match="flatten: out is None"):
        ops.flatten(p, None)
    with pytest.raises(TypeError, match="delta_flatten: out is None"):
        ops.delta_flatten(p, a, None)
    with pytest.raises(TypeError, match="merge: reduced is None"):
        ops.merge(p, a, None)
    with pytest.raises(TypeError, match="unflatten: flat is None"):
        ops.unflatten(None, p)
