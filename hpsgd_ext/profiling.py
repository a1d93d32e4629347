"""Profiler labels that cost nothing when no profiler runs.

``torch.profiler.record_function`` enters a RecordFunction scope even with no
profiler active, and a c10d collective issued inside one then does its own
profiling bookkeeping too: measured on one Gloo rank, an issue took 40-50 us
inside a label against 7 us outside. So HPSGD labels its regions only while a
profiler is running, where the labels are wanted."""

from __future__ import annotations

import contextlib

import torch

_NULL = contextlib.nullcontext()


def label(name: str):
    """``record_function(name)`` while a profiler runs, else a no-op context."""
    if torch.autograd._profiler_enabled():
        return torch.profiler.record_function(name)
    return _NULL
