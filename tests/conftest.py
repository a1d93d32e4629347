import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# Deterministic, fast CPU tests on small machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def world_of_one():
    """A default process group of one rank over Gloo, in this process."""
    import torch.distributed as dist

    from hpsgd_ext.launch import init_world_of_one

    yield init_world_of_one()
    dist.destroy_process_group()


# CI replays the same hypothesis examples every run (a failure is reproducible,
# never a coin toss); locally each run explores new ones.
from hypothesis import settings as _hyp_settings  # noqa: E402

_hyp_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    _hyp_settings.load_profile("ci")
