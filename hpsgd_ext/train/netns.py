"""Real, kernel-shaped links for the main job on one Linux machine (root needed):
one network namespace per worker, each joined to a bridge in the root namespace by a
veth pair whose two ends are rate-limited with ``tc tbf`` (egress of the worker and
egress towards it). Gloo's TCP traffic then crosses a real, slow link. Everything is
created under a unique prefix and removed on exit, also after errors.

Addresses are private ones inside these namespaces only (10.213.<net>.0/24); nothing
leaves the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid


def available() -> str | None:
    """None when shaped namespaces can be made here, else why not."""
    if os.name != "posix" or not os.path.exists("/proc/net"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' tool (iproute2)"
    return None


def _run(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")


class ShapedNetwork:
    """``workers`` namespaces on a bridge, every link shaped to ``mbit`` Mbit/s. Each
    namespace is one node: one worker, or the ranks of a node of several.

    Use as a context manager; ``address(r)`` is worker r's IP, ``exec_prefix(r)`` the
    command prefix that runs a program inside its namespace."""

    def __init__(self, workers: int, mbit: float, burst_kbit: int = 64, queue_ms: int = 100):
        why = available()
        if why:
            raise RuntimeError(f"ShapedNetwork: {why}")
        if not mbit > 0:
            raise ValueError(f"ShapedNetwork: mbit is {mbit!r}; expected a positive rate")
        self.workers, self.mbit = workers, mbit
        self.burst_kbit, self.queue_ms = burst_kbit, queue_ms
        self.tag = uuid.uuid4().hex[:5]
        self.net = int(self.tag, 16) % 200 + 20
        self.bridge = f"hpbr{self.tag}"
        self._made: list[tuple[str, str]] = []

    def ns(self, r: int) -> str:
        return f"hp{self.tag}-{r}"

    def address(self, r: int) -> str:
        return f"10.213.{self.net}.{r + 1}"

    def exec_prefix(self, r: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(r)]

    def _shape(self, *dev_prefix: str) -> None:
        _run(*dev_prefix[:-1], "tc", "qdisc", "add", "dev", dev_prefix[-1], "root", "tbf",
             "rate", f"{self.mbit}mbit", "burst", f"{self.burst_kbit}kbit", "latency", f"{self.queue_ms}ms")

    def __enter__(self) -> "ShapedNetwork":
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            _run("ip", "link", "set", self.bridge, "up")
            for r in range(self.workers):
                ns, host_end = self.ns(r), f"hpv{self.tag}{r}"
                _run("ip", "netns", "add", ns)
                self._made.append(("netns", ns))
                _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._made.append(("link", host_end))
                _run("ip", "link", "set", host_end, "master", self.bridge)
                _run("ip", "link", "set", host_end, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.address(r)}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                self._shape(host_end)                           # towards the worker
                self._shape("ip", "netns", "exec", ns, "eth0")  # from the worker
        except BaseException:
            self.close()
            raise
        return self

    def sent_bytes(self) -> int:
        """Bytes the namespaces have sent out over their shaped links so far (tc's
        counters on each namespace's end): the traffic that left its node."""
        total = 0
        for r in range(self.workers):
            res = subprocess.run(self.exec_prefix(r) + ["tc", "-s", "qdisc", "show", "dev", "eth0"],
                                 capture_output=True, text=True, check=True)
            total += sum(int(n) for n in re.findall(r"Sent (\d+) bytes", res.stdout))
        return total

    def close(self) -> None:
        for kind, name in reversed(self._made):
            cmd = ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
            subprocess.run(cmd, capture_output=True)
        self._made.clear()

    def __exit__(self, *exc) -> None:
        self.close()
