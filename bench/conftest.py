import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.fixture(scope="module")
def world_of_one():
    """A default process group of one rank over Gloo, torn down after the module."""
    import torch.distributed as dist

    from hpsgd_ext.launch import init_world_of_one

    yield init_world_of_one()
    dist.destroy_process_group()
