"""HPSGD for PyTorch Lightning (``lightning.pytorch``, tested with the version
``hpsgd_ext[lightning]`` pins).

    from hpsgd_ext.integrations.lightning import HPSGDCallback, HPSGDStrategy

    trainer = L.Trainer(strategy=HPSGDStrategy(), callbacks=[HPSGDCallback(sync_every=8)], ...)
    trainer.fit(model, ckpt_path=...)   # under torchrun, or Lightning's own launcher

- :class:`HPSGDStrategy` is Lightning's DDP strategy (process group, distributed
  sampler, launchers, barriers, ``sync_dist`` logging) without the
  ``DistributedDataParallel`` wrapper: each rank trains its own replica and HPSGD,
  not a per-step gradient all-reduce, keeps them together. Before a checkpoint's
  weights are read (``ModelCheckpoint``, ``trainer.save_checkpoint``, also with
  ``weights_only=True``) it has the callback synchronize, so a checkpoint holds the
  global model.
- :class:`HPSGDCallback` builds :class:`hpsgd_ext.HPSGD` on the optimizer Lightning
  steps (at ``on_fit_start``), calls ``synchronize()`` before every validation,
  before a checkpoint is taken and when training ends, stores HPSGD's state and
  every rank's optimizer state in the checkpoint
  (``checkpoint["callbacks"]["HPSGDCallback"]``) and loads them again when
  ``trainer.fit(ckpt_path=...)`` resumes (a resumed run continues bit for bit as
  the uninterrupted one), and closes HPSGD at teardown.

Every decision to synchronize is taken from ``trainer.global_step``, which is the
same on every rank, so the collective is entered by all ranks or by none.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from . import require

L = require("lightning.pytorch", "lightning", "lightning")
_DDPStrategy = require("lightning.pytorch.strategies", "lightning", "lightning").DDPStrategy

from ..hook import HPSGD  # noqa: E402
from ._local_state import load_optimizer_state, save_state  # noqa: E402

__all__ = ["HPSGDCallback", "HPSGDStrategy"]


class HPSGDCallback(L.Callback):
    """Runs HPSGD under a Lightning ``Trainer``; ``hpsgd_kwargs`` go to
    :class:`hpsgd_ext.HPSGD` (``sync_every``, ``replica``, ``comm_dtype``, ...).

    The module is handed to HPSGD whole (its trainable parameters and, with
    ``sync_buffers``, BatchNorm statistics); the Trainer must step exactly one
    optimizer that owns every trainable parameter. Use it with
    :class:`HPSGDStrategy` (or another strategy that leaves the module unwrapped):
    a module wrapped in ``DistributedDataParallel`` is refused, since DDP already
    averages every step and HPSGD would only add traffic.
    """

    def __init__(self, **hpsgd_kwargs: Any):
        self.hpsgd_kwargs = hpsgd_kwargs
        self.hpsgd: Optional[HPSGD] = None
        self._last: Optional[HPSGD] = None
        self._pending_state: Optional[dict] = None
        self._pending_optimizer: Optional[dict] = None  # each rank's optimizer state, from a checkpoint
        # trainer.global_step when the replicas were last equal; None: since on_fit_start,
        # before any optimizer step of this fit.
        self._synced_at: Optional[int] = None

    # --- building ----------------------------------------------------------------------------
    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not torch.distributed.is_available() or not torch.distributed.is_initialized():
            raise RuntimeError("HPSGDCallback: torch.distributed is not initialized; run the Trainer with a "
                               "distributed strategy (strategy=HPSGDStrategy()) on several processes")
        if isinstance(trainer.strategy.model, torch.nn.parallel.DistributedDataParallel):
            raise RuntimeError(f"HPSGDCallback: the module is wrapped in DistributedDataParallel by "
                               f"{type(trainer.strategy).__name__}, which averages gradients every step; "
                               "use strategy=hpsgd_ext.integrations.lightning.HPSGDStrategy() so that each "
                               "rank trains its own replica and HPSGD averages the changes")
        optimizers = trainer.strategy.optimizers
        if len(optimizers) != 1:
            raise ValueError(f"HPSGDCallback: the Trainer steps {len(optimizers)} optimizers; expected exactly "
                             "one (build hpsgd_ext.HPSGD per optimizer yourself for more)")
        self.close()
        self.hpsgd = HPSGD(pl_module, optimizers[0], **self.hpsgd_kwargs)
        if self._pending_state is not None:  # trainer.fit(ckpt_path=...): restored before the optimizers existed
            self.hpsgd.load_state_dict(self._pending_state["hpsgd"])
            self._pending_optimizer, self._pending_state = self._pending_state, None
        # Just built (rank 0's model everywhere) or restored from a synchronized state: in
        # sync. trainer.global_step is restored only after this hook; on_train_start reads it.
        self._synced_at = None

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._synced_at = trainer.global_step  # no optimizer step ran since on_fit_start
        if self._pending_optimizer is not None:
            # Lightning has just loaded rank 0's optimizer state on every rank; each
            # rank gets its own back (hpsgd_ext/integrations/_local_state.py).
            load_optimizer_state(self.hpsgd, self._pending_optimizer, "Lightning")
            self._pending_optimizer = None

    # --- synchronize: before validation, checkpoints, and the end of training ------------------
    def synchronize(self, trainer: "L.Trainer") -> None:
        """Every replica := the global model, unless no optimizer step ran since the
        last time (decided from ``trainer.global_step``: the same on every rank)."""
        if self.hpsgd is None or self.hpsgd.closed or self._synced_at in (None, trainer.global_step):
            return
        self.hpsgd.synchronize()
        self._synced_at = trainer.global_step

    def on_validation_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.synchronize(trainer)

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.synchronize(trainer)  # the module the user gets back is the global model

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Called on every rank while a checkpoint is dumped; HPSGDStrategy has
        # synchronized before the weights were read. Right after synchronize() the
        # state is the same on every rank, so rank 0's file resumes any rank.
        if self.hpsgd is None or self.hpsgd.closed:
            return {}
        return save_state(self.hpsgd)  # and every rank's optimizer state (_local_state.py)

    def on_save_checkpoint(self, trainer: "L.Trainer", pl_module: "L.LightningModule",
                           checkpoint: dict[str, Any]) -> None:
        if self.hpsgd is not None and not self.hpsgd.closed and self._synced_at not in (None, trainer.global_step):
            raise RuntimeError("HPSGDCallback: a checkpoint was taken while the replicas differ (its weights "
                               "would be rank 0's replica, not the global model); use "
                               "strategy=HPSGDStrategy(), which synchronizes before the weights are read")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("hpsgd") is None:
            return
        # Lightning restores callbacks before the optimizers exist: applied in
        # on_fit_start (HPSGD) and on_train_start (this rank's optimizer state).
        self._pending_state = state_dict

    # --- lifetime ------------------------------------------------------------------------------
    @property
    def last_stats(self) -> dict:
        """:meth:`hpsgd_ext.HPSGD.stats` of the running HPSGD, or of the last one
        (closed at teardown); ``{}`` before the first fit."""
        hp = self.hpsgd or self._last
        return hp.stats() if hp is not None else {}

    def close(self) -> None:
        if self.hpsgd is not None:
            self.hpsgd.close()
            self._last, self.hpsgd = self.hpsgd, None

    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if stage == "fit":
            self.close()

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self.close()  # rounds in flight are dropped; HPSGD's groups are released


class HPSGDStrategy(_DDPStrategy):
    """Lightning's DDP strategy with the module left unwrapped (each rank trains a
    replica; :class:`HPSGDCallback` keeps them together). Takes DDPStrategy's
    arguments (``process_group_backend="gloo"`` on CPU is the default there)."""

    def configure_ddp(self) -> None:
        # No DistributedDataParallel: no per-step gradient all-reduce.
        assert isinstance(self.model, L.LightningModule)

    def _hpsgd_callbacks(self) -> list[HPSGDCallback]:
        module = self.lightning_module
        trainer = getattr(module, "_trainer", None) if module is not None else None
        return [cb for cb in (trainer.callbacks if trainer is not None else []) if isinstance(cb, HPSGDCallback)]

    def lightning_module_state_dict(self) -> dict[str, Any]:
        # The first thing a checkpoint reads, on every rank: make it the global model.
        for cb in self._hpsgd_callbacks():
            cb.synchronize(self.lightning_module.trainer)
        return super().lightning_module_state_dict()
