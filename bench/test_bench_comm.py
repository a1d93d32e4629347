"""pytest-benchmark: one all-reduce through the Communicator against
torch.distributed.all_reduce on the same one-rank Gloo group, issue to completion,
so what differs is each path's fixed cost per collective (scheduling, the transport
call, the mean's division). `hpsgd-bench comm` runs several ranks and sizes up to 1 GB."""

import pytest
import torch
import torch.distributed as dist

from hpsgd_ext import Communicator


@pytest.fixture(scope="module")
def comm(world_of_one):
    with Communicator(timeout=60) as c:
        yield c


@pytest.mark.parametrize("nbytes", [4096, 4 << 20], ids=["4KB", "4MB"])
@pytest.mark.parametrize("impl", ["hpsgd", "torch"])
def test_all_reduce(benchmark, comm, impl, nbytes):
    x = torch.randn(nbytes // 4)
    want = x.clone()
    if impl == "hpsgd":
        def run():
            comm.all_reduce_async(x).wait()
    else:
        def run():
            dist.all_reduce(x, async_op=True).wait()
    benchmark.group = f"all_reduce {nbytes} bytes, one rank"
    benchmark.pedantic(run, warmup_rounds=20, rounds=500)
    torch.testing.assert_close(x, want)  # the mean over one rank changes nothing


def test_issue_cost(benchmark, comm):
    x = torch.ones(256)
    works = []
    benchmark.group = "issue one all_reduce_async"
    benchmark.pedantic(lambda: works.append(comm.all_reduce_async(x)), rounds=500)
    works[-1].wait()
    assert all(w.is_completed() for w in works)
