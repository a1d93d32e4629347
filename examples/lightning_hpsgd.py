"""PyTorch Lightning with HPSGD: run it with

    torchrun --standalone --nproc-per-node 2 examples/lightning_hpsgd.py --epochs 3 --out runs/lit
    torchrun ... examples/lightning_hpsgd.py --epochs 3 --out runs/lit2 --resume runs/lit/ckpt/epoch=0.ckpt

(2 Gloo processes on CPU; on GPUs pass --accelerator gpu). The LightningModule is
ordinary; HPSGD comes in through the Trainer's strategy and one callback. The
module checks, at every validation and at the end, that all replicas hold the
same weights (after HPSGD's synchronize()), and each rank writes what it saw.
"""

from __future__ import annotations

import argparse
import os
import sys

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader
from toy_task import dataset, digest, mlp, write_result

from hpsgd_ext.integrations import replicas_agree
from hpsgd_ext.integrations.lightning import HPSGDCallback, HPSGDStrategy


class Classifier(L.LightningModule):
    def __init__(self, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.net = mlp()
        self.agree_at_validation: list[bool] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def on_validation_start(self) -> None:
        # HPSGDCallback.on_validation_start has run: every replica is the global model.
        self.agree_at_validation.append(replicas_agree(self))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--sync-every", default="3", help="an int H, or auto")
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--out", required=True, help="folder for checkpoints and each rank's result (JSON)")
    ap.add_argument("--resume", default=None, help="a checkpoint to resume from")
    args = ap.parse_args()
    L.seed_everything(0, workers=True)
    sync_every = args.sync_every if args.sync_every == "auto" else int(args.sync_every)

    model = Classifier()
    hpsgd = HPSGDCallback(sync_every=sync_every)
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        strategy=HPSGDStrategy(), callbacks=[hpsgd, ModelCheckpoint(
            dirpath=os.path.join(args.out, "ckpt"), filename="{epoch}", save_top_k=-1)],
        max_epochs=args.epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=True)
    # 256 training samples: 8 steps of 16 per rank and epoch on 2 ranks.
    trainer.fit(model, DataLoader(dataset(256, 1), batch_size=16), DataLoader(dataset(64, 2), batch_size=16),
                ckpt_path=args.resume)

    # After fit: HPSGDCallback synchronized at on_train_end and closed HPSGD at teardown.
    result = {"agree_at_validation": model.agree_at_validation, "agree_at_end": replicas_agree(model),
              "digest": digest(model), "global_step": trainer.global_step}
    write_result(args.out, trainer.global_rank, result, hpsgd.last_stats)
    ok = result["agree_at_end"] and all(model.agree_at_validation)
    torch.distributed.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    # Leave without interpreter finalization. c10d's Gloo worker threads free a
    # collective's tensors a moment after the caller has the result; if that moment
    # falls in finalization, the free needs the GIL, Python ends the thread by a
    # forced unwind and the process aborts ("terminate called without an active
    # exception"; core dumps showed it after Lightning runs, about 1 in 3 on a busy
    # 2-core machine, also with the group destroyed). Nothing is left to run here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
