"""Local multi-process launch through torch's own elastic launcher (the API behind
``torchrun``). The same worker functions run unchanged under ``torchrun`` on many
machines: they read RANK/WORLD_SIZE/MASTER_* from the environment it sets."""

from __future__ import annotations

import datetime
import os
import socket
import uuid
from typing import Any, Callable

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_world_of_one() -> dist.ProcessGroup:
    """A default process group of one rank over Gloo in this process (for
    single-process benchmarks and tests); reuses an existing default group."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return dist.group.WORLD


def run_local(entrypoint: Callable[..., Any], nprocs: int, *args: Any,
              max_restarts: int = 0, log_dir: str | None = None) -> list[Any]:
    """Run ``entrypoint(*args)`` on ``nprocs`` local workers; returns their return
    values in rank order. A worker's exception fails the launch (ChildFailedError)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nprocs, run_id=uuid.uuid4().hex[:8],
                       rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}",
                       max_restarts=max_restarts, monitor_interval=0.1, start_method="spawn",
                       **({"logs_specs": _logs(log_dir)} if log_dir else {}))
    out = elastic_launch(cfg, entrypoint)(*args)
    return [out[r] for r in sorted(out)]


def _logs(log_dir: str):
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

    return DefaultLogsSpecs(log_dir=log_dir, tee=None)


def init_from_env(backend: str | None = None, timeout_s: float = 300.0) -> tuple[int, int]:
    """Join the group described by the launcher's environment (rank, world size)."""
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = datetime.timedelta(seconds=timeout_s)
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None or "MASTER_ADDR" not in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:
            # After an elastic restart the agent's store still holds the dead
            # attempt's keys (peer addresses); scope ours by attempt, or the new
            # workers try to connect to processes that no longer exist.
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=not agent_store and rank == 0, timeout=timeout)
            dist.init_process_group(backend, store=dist.PrefixStore(f"hpsgd/attempt_{restart}", store),
                                    rank=rank, world_size=world, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()
