"""hpsgd_ext: HPSGD (hierarchical parallel SGD with stale gradients) for PyTorch.

Workers train a local replica while the averaged model change of the previous round
is all-reduced in the background, then merge it into the global model. See
DESIGN.md section 2 for the exact rule and ``hpsgd_ext.ops`` for the fused kernels.
"""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C
from ._version import __version__
from . import emulation, ops, reference
from .comm import CommError, CommTimeoutError, Communicator, LinkModel, Work
from .hook import HPSGD


def built_with_cuda() -> bool:
    """True when the CUDA kernels were compiled into this build."""
    return bool(_C.built_with_cuda())


def built_with_nccl() -> bool:
    """True when the NCCL communicator was compiled into this build."""
    return bool(_C.built_with_nccl())


__all__ = ["__version__", "built_with_cuda", "built_with_nccl", "ops", "reference", "emulation", "Communicator", "HPSGD",
           "LinkModel", "Work", "CommError", "CommTimeoutError"]
