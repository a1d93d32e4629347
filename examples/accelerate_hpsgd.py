"""Hugging Face Accelerate with HPSGD: run it with

    accelerate launch --num_processes 2 --cpu examples/accelerate_hpsgd.py --out runs/acc
    (or: torchrun --standalone --nproc-per-node 2 examples/accelerate_hpsgd.py --out runs/acc)

and resume from a saved state with --resume runs/acc/state_epoch0. 2 Gloo processes
on CPU; on GPUs drop --cpu. The loop is Accelerate's usual one; HPSGD comes in
through hpsgd_ext.integrations.accelerate.prepare(). Each rank checks, at every
evaluation and at the end, that all replicas hold the same weights, and writes
what it saw.
"""

from __future__ import annotations

import argparse
import os

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from toy_task import dataset, digest, mlp, write_result

from hpsgd_ext.integrations import replicas_agree
from hpsgd_ext.integrations.accelerate import prepare


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--sync-every", default="3", help="an int H, or auto")
    ap.add_argument("--out", required=True, help="folder for saved states and each rank's result (JSON)")
    ap.add_argument("--resume", default=None, help="a folder written by accelerator.save_state")
    args = ap.parse_args()
    sync_every = args.sync_every if args.sync_every == "auto" else int(args.sync_every)

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(0)
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer, hp = prepare(accelerator, model, optimizer, sync_every=sync_every)
    # 256 training samples: 8 steps of 16 per rank and epoch on 2 ranks.
    train = accelerator.prepare(DataLoader(dataset(256, 1), batch_size=16))
    val = accelerator.prepare(DataLoader(dataset(64, 2), batch_size=16))

    first_epoch = 0
    if args.resume:
        accelerator.load_state(args.resume)  # model, optimizer, and HPSGD's state (and each rank's optimizer)
        first_epoch = int(args.resume.rstrip("/").rsplit("epoch", 1)[1]) + 1

    agree_at_eval = []
    for epoch in range(first_epoch, args.epochs):
        model.train()
        for x, y in train:
            loss = nn.functional.cross_entropy(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        with hp.evaluating(), torch.no_grad():  # synchronize(): every rank evaluates the global model
            agree_at_eval.append(replicas_agree(model))
            losses = [accelerator.gather_for_metrics(nn.functional.cross_entropy(model(x), y)[None])
                      for x, y in val]
            accelerator.print(f"epoch {epoch}: val loss {torch.cat(losses).mean().item():.4f}")
        accelerator.save_state(os.path.join(args.out, f"state_epoch{epoch}"))  # every rank calls it

    hp.synchronize()
    result = {"agree_at_eval": agree_at_eval, "agree_at_end": replicas_agree(model), "digest": digest(model)}
    write_result(args.out, accelerator.process_index, result, hp.stats())
    hp.close()
    accelerator.end_training()
    return 0 if result["agree_at_end"] and all(agree_at_eval) else 1


if __name__ == "__main__":
    raise SystemExit(main())
