"""pytest-benchmark: fused round_step vs the eager composition on the kernel
benchmark's real layouts, same inputs, same run. A small scale so the suite is quick;
`hpsgd-bench kernels` runs the full models (CUDA) or a tenth of them (CPU)."""

import pytest
import torch

from hpsgd_ext.bench import kernels

from conftest import DEVICES

SCALE = 0.02
CASES = ["gpt2+odd f32, bf16 wire", "llama bf16/f32a, bf16 wire, mom", "llama bf16/bf16a, bf16 wire"]


def _config(name):
    return next(c for c in kernels.configs() if c.name == name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_round_step(benchmark, device, case, impl):
    c = kernels.make_case(_config(case), device, scale=SCALE)
    fn = kernels.fused(c) if impl == "fused" else kernels.eager(c)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        fn()
        sync()

    benchmark.group = f"round_step {device} {case}"
    benchmark.extra_info["min_bytes"] = kernels.min_bytes(c)
    benchmark.pedantic(run, warmup_rounds=2, rounds=10)


def test_kernels_run_reports_every_column():
    """The `kernels` subcommand's run and table on CPU, one case, tiny scale."""
    res = kernels.run("cpu", scale=0.01, calls=1, reps=1, names=["gpt2+odd f32, f32"])
    (row,) = res["rows"]
    assert row["eager_bytes"] > row["min_bytes"] > 0
    assert row["fused_s"] > 0 and row["copy_s"] > 0
    assert res["host"]["cached_us"] > 0 and res["host"]["uncached_us"] > 0
    text = kernels.table(res["rows"], res["host"], res["resources"])
    assert "gpt2+odd" in text and "plan cache" in text


def test_dtype_sweep_covers_every_combination(tmp_path):
    """`hpsgd-bench kernels --dtypes`: every param/anchor pair round_step accepts times
    every wire, once each; two of them run through the benchmark and its table."""
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    sweep = kernels.sweep_configs()
    combos = {(c.param, c.anchor, c.flat) for c in sweep}
    assert len(sweep) == len(combos) == 25
    assert {(p, a) for p, a, _ in combos} == {(f32, f32), (bf16, f32), (bf16, bf16), (f16, f32), (f16, f16)}
    assert {w for _, _, w in combos} == {f32, bf16, f16, torch.int8, torch.float8_e4m3fn}
    with_momentum = kernels.sweep_configs(momentum=True)
    assert len(with_momentum) == 50 and sum(c.momentum > 0 for c in with_momentum) == 25
    res = kernels.run("cpu", scale=0.01, calls=1, reps=1, cases=sweep,
                      names=["p=f16 a=f16 w=int8", "p=bf16 a=bf16 w=f16"])
    assert [r["case"] for r in res["rows"]] == ["dtypes p=bf16 a=bf16 w=f16", "dtypes p=f16 a=f16 w=int8"]
    assert "lowest:" in kernels.table(res["rows"])
    kernels.plot_dtypes(res["rows"], str(tmp_path / "dtypes.png"))
    assert (tmp_path / "dtypes.png").stat().st_size > 0
