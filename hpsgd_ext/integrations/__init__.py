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


__all__ = ["require"]
