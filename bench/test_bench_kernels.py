"""pytest-benchmark: fused round_step vs the eager composition, same inputs, same run.
Small sizes so the suite is quick; `hpsgd-bench kernels` runs the 50M-parameter case."""

import pytest
import torch

from hpsgd_ext.bench import kernels

from conftest import DEVICES

NUMEL = 4_000_000


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flat_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_round_step(benchmark, device, flat_dtype, impl):
    case = kernels.make_case(NUMEL, device, torch.float32, flat_dtype)
    fn = kernels.fused(case) if impl == "fused" else kernels.eager(case)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        fn()
        sync()

    benchmark.group = f"round_step {device} flat={flat_dtype}"
    benchmark.extra_info["min_bytes"] = kernels.min_bytes(case)
    benchmark.pedantic(run, warmup_rounds=2, rounds=10)
