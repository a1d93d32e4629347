"""round_step on the layouts of real models, against a plain copy of the same bytes
(the ceiling, measured in the same run) and the best eager PyTorch composition.

- Kernel time: device events around ``calls`` back-to-back calls (CUDA), or the wall
  clock around them (CPU, where the call is synchronous); the median of ``reps``.
- Host time per call, apart: the wall clock of issuing the calls (CUDA: no sync inside),
  and on a 200-tensor layout of tiny tensors with the plan cache on and off.
- Bytes are the minimum one pass must move: every stream the call reads once, every
  stream it writes once. The eager composition's bytes are counted by running it once
  under a dispatch mode that adds up each op's tensor inputs and outputs; their ratio
  is the most the fused kernel can gain over eager if both ran at the copy bandwidth.
- Layouts: GPT-2 small (vocabulary 50,257), the same with an odd 50,257-element tensor
  first (every later segment misaligned in the flat buffer: the case a kernel that
  needs equal alignment falls off a cliff on), ResNet-50 (convolutions, BatchNorm,
  1,000-class head), and a Llama-style block stack with bf16 parameters and float32
  anchors (the hook's configuration), with and without outer momentum.
- 8-bit wires (int8, float8_e4m3fn): the same round step that also quantises into codes
  and block scales in its pass (docs/round-protocol.md, "8-bit wires"); its cost against
  the float32 and bfloat16 wires of the same layout is the codec's hidden cost. Its
  eager composition is the float32 rule above, then reference.quantize_blocks.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .. import _C, ops, reference


# --------------------------------------------------------------------------- layouts
def gpt2_layout(scale: float = 1.0, vocab: int = 50_257, odd_first: bool = False) -> list[tuple[int, ...]]:
    """GPT-2 small's parameters in model order (tied head): 12 blocks of d=768.
    ``scale`` < 1 shrinks the width and depth, not the vocabulary. ``odd_first`` puts a
    50,257-element tensor (an output bias) first, shifting every later segment."""
    d = max(64, int(768 * scale) // 64 * 64)
    layers = max(1, round(12 * scale))
    shapes: list[tuple[int, ...]] = [(vocab,)] if odd_first else []
    shapes += [(vocab, d), (1024, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def resnet50_layout(scale: float = 1.0, classes: int = 1000) -> list[tuple[int, ...]]:
    """ResNet-50's parameters in model order: convolutions, BatchNorm weight and bias,
    the ``classes``-way head. ``scale`` < 1 narrows every width."""
    w = lambda c: max(4, int(c * scale))  # noqa: E731
    shapes: list[tuple[int, ...]] = [(w(64), 3, 7, 7), (w(64),), (w(64),)]
    cin = w(64)
    for planes, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
        p = w(planes)
        for b in range(blocks):
            shapes += [(p, cin, 1, 1), (p,), (p,), (p, p, 3, 3), (p,), (p,), (4 * p, p, 1, 1), (4 * p,), (4 * p,)]
            if b == 0:
                shapes += [(4 * p, cin, 1, 1), (4 * p,), (4 * p,)]
            cin = 4 * p
    return shapes + [(classes, cin), (classes,)]


def llama_layout(scale: float = 1.0) -> list[tuple[int, ...]]:
    """A Llama-style stack: embedding, blocks of (norm, q, k, v, o, norm, gate, up,
    down), final norm, untied head. Full size: d=2048, ffn 5632, 8 blocks, vocab 32,000."""
    d = max(64, int(2048 * scale) // 64 * 64)
    f = max(128, int(5632 * scale) // 64 * 64)
    layers = max(1, round(8 * scale))
    vocab = 32_000
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d,), (d, d), (d // 4, d), (d // 4, d), (d, d), (d,), (f, d), (f, d), (d, f)]
    return shapes + [(d,), (vocab, d)]


@dataclass
class Config:
    name: str
    layout: str  # gpt2 | gpt2-odd | resnet50 | llama
    param: torch.dtype
    anchor: torch.dtype
    flat: torch.dtype
    keep: bool = True
    momentum: float = 0.0


def configs() -> list[Config]:
    f32, bf16 = torch.float32, torch.bfloat16
    return [
        Config("gpt2 f32, f32 wire", "gpt2", f32, f32, f32),
        Config("gpt2+odd f32, f32 wire", "gpt2-odd", f32, f32, f32),
        Config("gpt2 f32, bf16 wire", "gpt2", f32, f32, bf16),
        Config("gpt2+odd f32, bf16 wire", "gpt2-odd", f32, f32, bf16),
        Config("resnet50 f32, f32 wire", "resnet50", f32, f32, f32),
        Config("llama bf16/f32a, bf16 wire", "llama", bf16, f32, bf16),
        Config("llama bf16/f32a, bf16 wire, mom", "llama", bf16, f32, bf16, momentum=0.9),
        Config("llama bf16/bf16a, bf16 wire", "llama", bf16, bf16, bf16),
        Config("llama bf16/f32a, bf16, reset", "llama", bf16, f32, bf16, keep=False),
        Config("gpt2 f32, int8 wire", "gpt2", f32, f32, torch.int8),
        Config("gpt2 f32, fp8 wire", "gpt2", f32, f32, torch.float8_e4m3fn),
        Config("gpt2+odd f32, int8 wire", "gpt2-odd", f32, f32, torch.int8),
        Config("llama bf16/f32a, int8 wire, mom", "llama", bf16, f32, torch.int8, momentum=0.9),
    ]


_SHORT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.int8: "int8",
          torch.float8_e4m3fn: "fp8"}


def sweep_configs(momentum: bool = False) -> list[Config]:
    """Every dtype combination round_step accepts, on GPT-2 with the keep rule: params
    float32, bfloat16 or float16; anchors float32 or the params' dtype; every wire
    (float32, bfloat16, float16, int8, float8_e4m3fn). 25 cases (or 25 more with outer
    momentum)."""
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    pairs = [(f32, f32), (bf16, f32), (bf16, bf16), (f16, f32), (f16, f16)]
    wires = [f32, bf16, f16, torch.int8, torch.float8_e4m3fn]
    mus = [0.0, 0.9] if momentum else [0.0]
    return [Config(f"dtypes p={_SHORT[p]} a={_SHORT[a]} w={_SHORT[w]}" + (", mom" if mu else ""),
                   "gpt2", p, a, w, momentum=mu)
            for mu in mus for p, a in pairs for w in wires]


def is_8bit(dtype: torch.dtype) -> bool:
    return dtype in (torch.int8, torch.float8_e4m3fn)


def layout_shapes(layout: str, scale: float) -> list[tuple[int, ...]]:
    if layout == "gpt2":
        return gpt2_layout(scale)
    if layout == "gpt2-odd":
        return gpt2_layout(scale, odd_first=True)
    if layout == "resnet50":
        return resnet50_layout(scale)
    if layout == "llama":
        return llama_layout(scale)
    raise ValueError(layout)


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    cfg: Config
    params: list[torch.Tensor]
    anchors: list[torch.Tensor]
    reduced: torch.Tensor
    out: torch.Tensor
    sent: Optional[torch.Tensor]
    momenta: Optional[list[torch.Tensor]]
    numel: int
    extra: dict = field(default_factory=dict)
    out_scales: Optional[torch.Tensor] = None  # 8-bit wires: block scales out and in
    reduced_scales: Optional[torch.Tensor] = None

    def flat_views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        sizes = [p.numel() for p in self.params]
        return [v.view_as(p) for v, p in zip(flat[: self.numel].split(sizes), self.params)]


def make_case(cfg: Config, device: str, scale: float = 1.0, seed: int = 0) -> Case:
    """Random (never zero) inputs in the layout's shapes, allocated one by one like a
    model's parameters, so each tensor starts aligned and only the flat offsets shift."""
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = layout_shapes(cfg.layout, scale)

    def rand(s, dt, k=1.0):
        return (torch.randn(s, device=device, generator=g) * k).to(dt)

    ps = [rand(s, cfg.param) for s in shapes]
    an = [rand(s, cfg.anchor) for s in shapes]
    n = sum(p.numel() for p in ps)
    ms = [rand(s, cfg.anchor, 0.01) for s in shapes] if cfg.momentum else None
    if is_8bit(cfg.flat):
        red, red_s = reference.quantize_blocks(rand(n, torch.float32, 0.01), cfg.flat)
        sent = rand(n, torch.float32, 0.01) if cfg.keep else None
        out_s = torch.empty_like(red_s)
        return Case(cfg, ps, an, red, torch.empty(n, device=device, dtype=cfg.flat), sent, ms, n,
                    out_scales=out_s, reduced_scales=red_s)
    red = rand(n, cfg.flat, 0.01)
    sent = rand(n, cfg.flat, 0.01) if cfg.keep else None
    return Case(cfg, ps, an, red, torch.empty(n, device=device, dtype=cfg.flat), sent, ms, n)


def fused(c: Case, lr: float = 0.5) -> Callable[[], None]:
    mom = c.cfg.momentum

    def run():
        ops.round_step(c.params, c.anchors, c.reduced, c.out, lr=lr, momentum_buffers=c.momenta,
                       momentum=mom, sent=c.sent, out_scales=c.out_scales,
                       reduced_scales=c.reduced_scales)
    return run


def eager(c: Case, lr: float = 0.5) -> Callable[[], None]:
    """The same rule with foreach ops on views of the flat buffers (no torch.cat copy),
    math in the anchors' dtype; the fastest eager form we found. 8-bit wires: the
    reduced codes dequantised first, the change into a float32 buffer, then quantised."""
    if is_8bit(c.cfg.flat):
        wide = Case(replace(c.cfg, flat=torch.float32), c.params, c.anchors, None,
                    torch.empty(c.numel, device=c.out.device),
                    c.sent, c.momenta, c.numel)
        step = None

        def run8():
            nonlocal step
            wide.reduced = reference.dequantize_blocks(c.reduced, c.reduced_scales)
            if step is None:
                step = eager(wide, lr)
            step()
            codes, scales = reference.quantize_blocks(wide.out, c.cfg.flat)
            c.out.copy_(codes)
            c.out_scales.copy_(scales)
            if c.sent is not None:
                c.sent.copy_(reference.dequantize_blocks(codes, scales))
        return run8
    out_v, red_v = c.flat_views(c.out), c.flat_views(c.reduced)
    sent_v = c.flat_views(c.sent) if c.sent is not None else None
    adt = c.anchors[0].dtype

    def as_anchor(xs):
        return xs if xs[0].dtype == adt else [x.to(adt) for x in xs]

    def run():
        d = torch._foreach_sub(as_anchor(c.params), c.anchors)
        if sent_v is not None:
            torch._foreach_sub_(d, as_anchor(sent_v))
        torch._foreach_copy_(out_v, d)
        if sent_v is not None:
            torch._foreach_copy_(sent_v, d)
        r = as_anchor(red_v)
        if c.momenta is not None:
            torch._foreach_mul_(c.momenta, c.cfg.momentum)
            torch._foreach_add_(c.momenta, r)
            torch._foreach_add_(c.anchors, c.momenta, alpha=lr)
        else:
            torch._foreach_add_(c.anchors, r, alpha=lr)
        if sent_v is not None:
            torch._foreach_add_(d, c.anchors)
            torch._foreach_copy_(c.params, d)
        else:
            torch._foreach_copy_(c.params, c.anchors)
    return run


def min_bytes(c: Case) -> int:
    """One pass: p, a, reduced (+ m, sent) read; out, a, p (+ m, sent) written (8-bit
    wires: one byte a code, `sent` float32, and the block scales read and written)."""
    pe, ae, fe = c.params[0].element_size(), c.anchors[0].element_size(), c.out.element_size()
    se = c.sent.element_size() if c.sent is not None else 0
    per = 2 * pe + 2 * ae + fe + fe  # p, a read and written; reduced read; out written
    if c.sent is not None:
        per += 2 * se
    if c.momenta is not None:
        per += 2 * ae
    scales = 0 if c.out_scales is None else 2 * 4 * c.out_scales.numel()
    return c.numel * per + scales


class _ByteCounter(TorchDispatchMode):
    """Adds up the bytes each op reads (its tensor arguments) and writes (the arguments
    its schema marks as written, else its outputs); a copy's destination is written,
    not read."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        read, written = [], []
        for i, a in enumerate(func._schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(a.name)
            ts = [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
            is_write = a.alias_info is not None and a.alias_info.is_write
            if is_write:
                written += ts
            if not (is_write and "copy" in func.__name__):
                read += ts
        if not written:
            written = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.bytes += sum(t.numel() * t.element_size() for t in read + written)
        return out


def eager_bytes(c: Case) -> int:
    fn = eager(c)
    counter = _ByteCounter()
    with counter:
        fn()
    return counter.bytes


# --------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], object], device: str, calls: int, reps: int) -> dict:
    """Seconds per call: events (CUDA) or wall clock (CPU) around ``calls`` back-to-back
    calls, median of ``reps``; and the host's wall time to issue them (CUDA)."""
    fn()
    _sync(device)
    per, host = [], []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            host.append((time.perf_counter() - t0) / calls)
            end.record()
            end.synchronize()
            per.append(start.elapsed_time(end) / 1e3 / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            per.append((time.perf_counter() - t0) / calls)
    return {"s": statistics.median(per), "min_s": min(per),
            "host_s": statistics.median(host) if host else None}


def copy_time(nbytes: int, device: str, calls: int, reps: int) -> float:
    """A device copy moving ``nbytes`` in all (half read, half written): the ceiling."""
    src = torch.empty(nbytes // 8, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return time_calls(lambda: dst.copy_(src), device, calls, reps)["s"]


def host_cost(device: str, tensors: int = 200, calls: int = 200) -> dict:
    """Host microseconds per round_step call over ``tensors`` tiny tensors (the kernel
    does almost nothing), with the plan cache on and off; CUDA: launch only."""
    cfg = Config("host", "gpt2", torch.float32, torch.float32, torch.bfloat16)
    g = torch.Generator(device=device).manual_seed(1)
    ps = [torch.randn(8, device=device, generator=g) for _ in range(tensors)]
    an = [torch.randn(8, device=device, generator=g) for _ in range(tensors)]
    n = 8 * tensors
    red = torch.randn(n, device=device, generator=g).to(cfg.flat)
    c = Case(cfg, ps, an, red, torch.empty(n, device=device, dtype=cfg.flat), red.clone(), None, n)
    fn = fused(c)
    res = {"tensors": tensors}
    for key, on in (("cached", True), ("uncached", False)):
        old = _C._set_plan_cache_enabled(on)
        try:
            for _ in range(3):
                fn()
            _sync(device)
            py, cpp = [], []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                py.append((time.perf_counter() - t0) / calls * 1e6)
                _sync(device)
                cpp.append(_C._time_round_step(c.params, c.anchors, c.reduced, c.out, c.sent, calls))
                _sync(device)
            res[f"{key}_us"] = statistics.median(cpp)  # a C++ caller (the round engine)
            res[f"{key}_python_us"] = statistics.median(py)  # through hpsgd_ext.ops
        finally:
            _C._set_plan_cache_enabled(old)
    return res


# --------------------------------------------------------------------------- resources
def kernel_name(c: Case) -> str:
    """The name preload_kernels() reports for the kernel this case launches."""
    if is_8bit(c.cfg.flat):  # as quantized_kernels() names them (quantized_step_cuda.cu)
        shape = (2 if c.reduced is not None else 0) + (c.sent is not None) + (2 if c.momenta else 0)
        code = "Char" if c.cfg.flat == torch.int8 else "Float8_e4m3fn"
        name = {torch.float32: "Float", torch.bfloat16: "BFloat16", torch.float16: "Half"}
        return f"quantized_step[{shape}] p={name[c.cfg.param]} a={name[c.cfg.anchor]} c={code}"
    flags = "ar" + ("s" if c.sent is not None else "-") + ("m" if c.momenta is not None else "-") + "op"
    return f"boundary[{flags}] p={_SHORT[c.cfg.param]} a={_SHORT[c.cfg.anchor]} f={_SHORT[c.cfg.flat]}"


def cuobjdump_resources(path: Optional[str] = None) -> Optional[list[dict]]:
    """Registers, stack and local (spill) bytes per kernel of the built library, read
    with cuobjdump (no GPU needed); None when the library has no CUDA code or no
    cuobjdump is found."""
    import os
    import re
    import shutil
    import subprocess

    path = path or _C.__file__
    tool = shutil.which("cuobjdump")
    cands = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    try:
        import triton  # its wheel carries a cuobjdump
        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except Exception:
        pass
    for cand in cands:
        if tool is None and os.path.exists(cand):
            tool = cand
    if tool is None:
        return None
    res = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    rows, fn = [], None
    for line in res.stdout.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            fn = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and fn:
            rows.append({"function": fn, "registers": int(m.group(1)), "stack": int(m.group(2)),
                         "local": int(m.group(4))})
            fn = None
    return rows


def resources_summary(device: str) -> dict:
    out: dict = {}
    if not _C.built_with_cuda():
        return out
    dump = cuobjdump_resources()
    if dump is not None:
        ours = [r for r in dump if "multi_tensor_kernel" in r["function"]]
        if ours:
            out["cuobjdump"] = {"kernels": len(ours),
                                "registers_min": min(r["registers"] for r in ours),
                                "registers_max": max(r["registers"] for r in ours),
                                "stack_max": max(r["stack"] for r in ours),
                                "local_max": max(r["local"] for r in ours)}
    if device == "cuda":
        out["kernels"] = ops.preload_kernels()
    return out


# --------------------------------------------------------------------------- run
def run(device: str = "cpu", scale: Optional[float] = None, calls: Optional[int] = None,
        reps: int = 5, names: Optional[list[str]] = None,
        cases: Optional[list[Config]] = None) -> dict:
    """Every config of ``cases`` (default: the real-model configs) whose name contains
    one of ``names`` (default: all) on ``device``. Default sizes: full models on CUDA,
    a tenth-scale on CPU."""
    scale = scale if scale is not None else (1.0 if device == "cuda" else 0.1)
    calls = calls or (20 if device == "cuda" else 3)
    res = resources_summary(device)
    by_name = {k["name"]: k for k in res.get("kernels", [])}
    rows = []
    for cfg in configs() if cases is None else cases:
        if names and not any(n in cfg.name for n in names):
            continue
        c = make_case(cfg, device, scale)
        nbytes, ebytes = min_bytes(c), eager_bytes(c)
        tf = time_calls(fused(c), device, calls, reps)
        te = time_calls(eager(c), device, max(1, calls // 4), max(3, reps // 2))
        tc = copy_time(nbytes, device, calls, reps)
        k = by_name.get(kernel_name(c), {})
        rows.append({
            "case": cfg.name, "layout": cfg.layout, "device": device,
            "param_dtype": str(cfg.param).split(".")[-1], "anchor_dtype": str(cfg.anchor).split(".")[-1],
            "flat_dtype": str(cfg.flat).split(".")[-1], "keep": cfg.keep, "momentum": cfg.momentum,
            "numel": c.numel, "tensors": len(c.params), "min_bytes": nbytes, "eager_bytes": ebytes,
            "fused_s": tf["s"], "fused_min_s": tf["min_s"], "host_s": tf["host_s"],
            "eager_s": te["s"], "copy_s": tc,
            "fused_GBps": nbytes / tf["s"] / 1e9, "copy_GBps": nbytes / tc / 1e9,
            "fraction_of_copy": tc / tf["s"],
            "speedup_vs_eager": te["s"] / tf["s"], "eager_ceiling": ebytes / nbytes,
            "registers": k.get("registers"), "local_bytes": k.get("local_bytes"),
            "blocks_per_sm": k.get("blocks_per_sm"), "kernel": kernel_name(c),
        })
        del c
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"benchmark": "kernels", "scale": scale, "calls": calls, "rows": rows,
            "host": host_cost(device), "resources": {k: v for k, v in res.items() if k != "kernels"},
            "kernels": res.get("kernels", [])}


def table(rows: list[dict], host: Optional[dict] = None, resources: Optional[dict] = None) -> str:
    """One line per case: kernel time, share of the copy ceiling, the eager ratio and
    its byte-count ceiling; then the host cost and the register counts."""
    if rows and "case" not in rows[0]:
        return _table_v1(rows)
    head = (f"{'case':33} {'tensors':>7} {'MB':>7} {'ms':>8} {'GB/s':>7} {'copy GB/s':>9} {'% copy':>6} "
            f"{'x eager':>7} {'ceil':>5} {'% ceil':>6} {'host us':>7} {'regs':>4}")
    lines = [head, "-" * len(head)]
    for r in rows:
        host_us = f"{r['host_s'] * 1e6:7.1f}" if r.get("host_s") else f"{'-':>7}"
        regs = f"{r['registers']:4d}" if r.get("registers") else f"{'-':>4}"
        lines.append(
            f"{r['case']:33} {r['tensors']:7d} {r['min_bytes'] / 1e6:7.0f} {r['fused_s'] * 1e3:8.3f} "
            f"{r['fused_GBps']:7.1f} {r['copy_GBps']:9.1f} {100 * r['fraction_of_copy']:5.0f}% "
            f"{r['speedup_vs_eager']:7.2f} {r['eager_ceiling']:5.2f} "
            f"{100 * r['speedup_vs_eager'] / r['eager_ceiling']:5.0f}% {host_us} {regs}")
    if len(rows) > 1:
        worst_copy = min(rows, key=lambda r: r["fraction_of_copy"])
        worst_eager = min(rows, key=lambda r: r["speedup_vs_eager"])
        lines.append(f"lowest: {100 * worst_copy['fraction_of_copy']:.0f}% of copy ({worst_copy['case']}), "
                     f"{worst_eager['speedup_vs_eager']:.2f}x eager ({worst_eager['case']})")
    if host:
        lines.append(f"host cost of one round_step over {host['tensors']} tensors, called from C++: "
                     f"{host['cached_us']:.1f} us with the plan cache, {host['uncached_us']:.1f} us without; "
                     f"from Python: {host['cached_python_us']:.1f} / {host['uncached_python_us']:.1f} us")
    if resources and resources.get("cuobjdump"):
        d = resources["cuobjdump"]
        lines.append(f"cuobjdump: {d['kernels']} kernels, {d['registers_min']}-{d['registers_max']} registers, "
                     f"stack <= {d['stack_max']} B, local (spills) <= {d['local_max']} B")
    return "\n".join(lines)


def _table_v1(rows: list[dict]) -> str:
    """The first benchmark's rows (one synthetic layout; bench/results/gpu-h200)."""
    head = f"{'device':6} {'param':8} {'flat':8} {'tensors':>7} {'MB':>7} {'fused ms':>9} {'eager ms':>9} {'GB/s':>7} {'copy GB/s':>9} {'x eager':>7} {'% copy':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['device']:6} {r['param_dtype']:8} {r['flat_dtype']:8} {r['tensors']:7d} "
                     f"{r['min_bytes'] / 1e6:7.0f} {r['fused_s'] * 1e3:9.2f} {r['eager_s'] * 1e3:9.2f} "
                     f"{r['fused_GBps']:7.1f} {r['copy_GBps']:9.1f} {r['speedup_vs_eager']:7.2f} "
                     f"{100 * r['fraction_of_copy']:5.0f}%")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    from .plots import grouped_bars

    groups = [r["case"].replace(", ", "\n", 1) for r in rows]
    grouped_bars(path, f"round_step on real layouts ({rows[0]['device']})", groups,
                 {"fused": [r["fused_GBps"] for r in rows],
                  "plain copy of the same bytes": [r["copy_GBps"] for r in rows]},
                 "GB/s of the minimum traffic")


def plot_dtypes(rows: list[dict], path: str) -> None:
    """The dtype sweep as two grids, params/anchors (and momentum) by wire: share of the
    copy ceiling and speedup over eager, the issue's targets (50%, 2x) outlined."""
    from .plots import heat_grids

    short = {str(d).split(".")[-1]: name for d, name in _SHORT.items()}  # rows store dtype names
    key = lambda r: (f"p={short[r['param_dtype']]} a={short[r['anchor_dtype']]}"  # noqa: E731
                     + (", mom" if r["momentum"] else ""))
    row_names = list(dict.fromkeys(key(r) for r in rows))
    col_names = list(dict.fromkeys(short[r["flat_dtype"]] for r in rows))
    cell = {(key(r), short[r["flat_dtype"]]): r for r in rows}

    def grid(f):
        return [[f(cell[(a, w)]) if (a, w) in cell else None for w in col_names] for a in row_names]

    heat_grids(path, f"round_step, every dtype combination ({rows[0]['device']}, {rows[0]['layout']})",
               row_names, [f"{w} wire" for w in col_names],
               {"% of copy": grid(lambda r: 100 * r["fraction_of_copy"]),
                "x eager": grid(lambda r: r["speedup_vs_eager"])},
               fmt="%.3g", thresholds={"% of copy": 50, "x eager": 2})
