"""HPSGD for Hugging Face Accelerate (tested with the version
``hpsgd_ext[accelerate]`` pins).

    from hpsgd_ext.integrations.accelerate import prepare

    accelerator = Accelerator()
    model, optimizer, hp = prepare(accelerator, model, optimizer, sync_every=8)
    loader = accelerator.prepare(loader)               # scheduler etc. as usual
    for x, y in loader:                                # the loop is unchanged
        accelerator.backward(loss_fn(model(x), y)); optimizer.step(); optimizer.zero_grad()
    with hp.evaluating():                              # synchronize(), eval mode, back to train
        ...
    accelerator.save_state(folder)                     # on every rank, as Accelerate asks
    accelerator.load_state(folder)                     # HPSGD's state comes back too
    hp.close()

:func:`prepare` hands the model to ``accelerator.prepare_model(...,
evaluation_mode=True)``, Accelerate's path that places the model and applies mixed
precision without the ``DistributedDataParallel`` wrapper: each rank trains its own
replica and HPSGD, not a per-step gradient all-reduce, keeps them together. The
optimizer goes through ``accelerator.prepare_optimizer`` as usual (gradient
accumulation, the fp16 GradScaler: a step the scaler skips still counts toward a
fixed window). HPSGD follows the wrapped optimizer's steps.

Checkpoints: a pre-save hook synchronizes before Accelerate writes the weights (and
hands it the synchronized state dicts), so the saved model is the global model; the
returned :class:`AcceleratedHPSGD` is registered with
``accelerator.register_for_checkpointing`` and stores HPSGD's state and every rank's
optimizer state (Accelerate saves rank 0's only), which ``load_state`` restores: a
resumed run continues bit for bit as the uninterrupted one.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from . import require

_accelerate = require("accelerate", "accelerate", "accelerate")

from ..hook import HPSGD  # noqa: E402
from ._local_state import load_optimizer_state, save_state  # noqa: E402

__all__ = ["AcceleratedHPSGD", "prepare"]


class AcceleratedHPSGD:
    """HPSGD under an ``accelerate.Accelerator`` (built by :func:`prepare`).

    Attributes: ``hpsgd`` (the :class:`hpsgd_ext.HPSGD`), ``accelerator``, ``model``.
    """

    def __init__(self, accelerator: "_accelerate.Accelerator", model: nn.Module,
                 optimizer: torch.optim.Optimizer, **hpsgd_kwargs: Any):
        self.accelerator = accelerator
        self.model = model
        self.hpsgd = HPSGD(model, optimizer, **hpsgd_kwargs)
        accelerator.register_for_checkpointing(self)
        self._save_hook = accelerator.register_save_state_pre_hook(self._before_save)

    def synchronize(self) -> None:
        """Collective: every replica := the global model (:meth:`hpsgd_ext.HPSGD.synchronize`)."""
        self.hpsgd.synchronize()

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[nn.Module]:
        """Collective: synchronize, then the model in eval mode for the block (its
        previous mode afterwards). Every rank evaluates the global model."""
        self.synchronize()
        was_training = self.model.training
        self.model.eval()
        try:
            yield self.model
        finally:
            self.model.train(was_training)

    def _before_save(self, models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        # Accelerate has read the state dicts already; synchronize, then hand it
        # the global model's (not the aliases of the replicas it read).
        self.synchronize()
        for i, m in enumerate(models):
            if m is self.model:
                weights[i] = self.accelerator.get_state_dict(m, unwrap=False)

    # --- accelerator.register_for_checkpointing ------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Called on every rank by save_state (after _before_save synchronized).
        return save_state(self.hpsgd)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # load_state has restored the model and rank 0's optimizer state on every rank.
        self.hpsgd.load_state_dict(state["hpsgd"])
        load_optimizer_state(self.hpsgd, state, "Accelerate")

    def stats(self) -> dict:
        return self.hpsgd.stats()

    def close(self) -> None:
        """Release HPSGD (rounds in flight are dropped: synchronize() first to keep them)."""
        self._save_hook.remove()
        self.hpsgd.close()

    def __enter__(self) -> "AcceleratedHPSGD":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare(accelerator: "_accelerate.Accelerator", model: nn.Module, optimizer: torch.optim.Optimizer,
            **hpsgd_kwargs: Any) -> tuple[nn.Module, Any, AcceleratedHPSGD]:
    """Prepare ``model`` and ``optimizer`` with ``accelerator`` for HPSGD and build it.

    Returns ``(model, optimizer, hp)``: the placed (not DDP-wrapped) model, Accelerate's
    wrapped optimizer, and the :class:`AcceleratedHPSGD`. ``hpsgd_kwargs`` go to
    :class:`hpsgd_ext.HPSGD`; ``grad_scaler`` defaults to the accelerator's (fp16).
    Call it on every rank, after ``Accelerator()`` and before training.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError("hpsgd_ext.integrations.accelerate.prepare: the model is already wrapped in "
                         "DistributedDataParallel (prepared by accelerator.prepare?); pass the plain model, "
                         "which prepare() places without DDP")
    if isinstance(optimizer, _accelerate.optimizer.AcceleratedOptimizer):
        raise ValueError("hpsgd_ext.integrations.accelerate.prepare: pass the plain optimizer, not one "
                         "accelerator.prepare() already wrapped")
    model = accelerator.prepare_model(model, evaluation_mode=True)  # placed, mixed precision, no DDP
    wrapped = accelerator.prepare_optimizer(optimizer)
    hpsgd_kwargs.setdefault("grad_scaler", accelerator.scaler)
    return model, wrapped, AcceleratedHPSGD(accelerator, model, wrapped.optimizer, **hpsgd_kwargs)
