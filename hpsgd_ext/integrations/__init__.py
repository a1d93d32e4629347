"""HPSGD inside the trainers people already use.

Each module imports its framework only when it is itself imported, so
``import hpsgd_ext`` never needs them:

- :mod:`hpsgd_ext.integrations.lightning`: ``HPSGDStrategy`` and ``HPSGDCallback``
  for PyTorch Lightning (``pip install 'hpsgd_ext[lightning]'``);
- :mod:`hpsgd_ext.integrations.accelerate`: ``prepare()`` for Hugging Face
  Accelerate (``pip install 'hpsgd_ext[accelerate]'``).

Every integration does the same three things: it attaches HPSGD to the optimizer
the framework steps (each rank trains its own replica: no DDP wrapper averaging
gradients every step), it calls :meth:`hpsgd_ext.HPSGD.synchronize` before
validation and before a checkpoint's weights are read, and it stores HPSGD's state
in the framework's checkpoints and restores it on resume.
"""

from __future__ import annotations

import importlib


def require(module: str, integration: str, extra: str):
    """Import ``module`` or raise an ImportError that says what to install (the
    extra pins the version the integration is tested with)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"hpsgd_ext.integrations.{integration} needs {module.split('.')[0]}, which is not installed "
            f"(importing {module} failed: {e}); install the tested version with "
            f"pip install 'hpsgd_ext[{extra}]', or see requirements.txt for the pin") from e



def replicas_agree(module, group=None) -> bool:
    """Collective over ``group`` (default: the world): do all ranks hold bit-identical
    parameters in ``module``? True right after :meth:`hpsgd_ext.HPSGD.synchronize`."""
    import torch
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, flat, group=group)
    return all(torch.equal(everyone[0], f) for f in everyone)


__all__ = ["replicas_agree", "require"]
