"""The same comparison over an emulated WAN: two network namespaces joined by a veth pair.

The servers run in one namespace, the measuring client in the other, and
``tc netem`` on both ends of the link adds delay (and loss). Only addresses
inside the two namespaces made here are used; both are deleted afterwards
(which deletes the veth pair too). Needs root, iproute2 and, for delay, the
kernel's ``sch_netem``; where any is missing :class:`WanUnavailable` says
which, so a notebook section can skip cleanly. The namespaces share the
host's clock, so one-way latency stays meaningful.

    python -m nbchat.bench.wan CLIENT-SPEC-JSON     # the client half, run inside the client namespace
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .report import Results, Row

NS_SERVER, NS_CLIENT = "nbchat-bench-srv", "nbchat-bench-cli"
VETH_SERVER, VETH_CLIENT = "nbbench0", "nbbench1"
SERVER_ADDR, CLIENT_ADDR = "10.203.77.1", "10.203.77.2"


class WanUnavailable(RuntimeError):
    """The WAN emulation cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class WanLink:
    """netem on each end: ``delay_ms`` each way (the round trip is twice it), ``loss_pct`` each way."""

    delay_ms: float = 20.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def netem(self) -> list[str]:
        args = ["delay", f"{self.delay_ms}ms"] + ([f"{self.jitter_ms}ms"] if self.jitter_ms else [])
        return args + (["loss", f"{self.loss_pct}%"] if self.loss_pct else [])


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise WanUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _setup(link: WanLink) -> None:
    _ip("netns", "add", NS_SERVER)
    _ip("netns", "add", NS_CLIENT)
    _ip("link", "add", VETH_SERVER, "netns", NS_SERVER, "type", "veth", "peer", "name", VETH_CLIENT,
        "netns", NS_CLIENT)
    for ns, dev, addr in ((NS_SERVER, VETH_SERVER, SERVER_ADDR), (NS_CLIENT, VETH_CLIENT, CLIENT_ADDR)):
        _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        if link.delay_ms or link.loss_pct:
            done = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
                                   *link.netem()], capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                raise WanUnavailable(f"tc netem is not available ({done.stderr.strip()}): "
                                     "the kernel needs the sch_netem module")


@contextlib.contextmanager
def wan_namespaces(link: WanLink) -> Iterator[None]:
    """Make the two namespaces and the link; always remove them again."""
    if os.name != "posix" or os.geteuid() != 0:
        raise WanUnavailable("network namespaces need root")
    if shutil.which("ip") is None or shutil.which("tc") is None:
        raise WanUnavailable("iproute2 (ip, tc) is not installed")
    _remove()  # what a run that was killed may have left behind (these names are this module's own)
    try:
        _setup(link)
        yield
    finally:
        _remove()


def _remove() -> None:
    for ns in (NS_SERVER, NS_CLIENT):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


async def run_wan(link: WanLink | None = None, config: Any = None) -> Results:
    """TTFT and per-chunk latency of every transport and raw TCP across the emulated link."""
    from .procs import nbchat_server, raw_server
    from .runner import BenchConfig

    link = link or WanLink()
    config = config or BenchConfig.quick(progress=False)
    inside = ("ip", "netns", "exec", NS_SERVER)
    with wan_namespaces(link):
        async with raw_server(SERVER_ADDR, inside) as raw, nbchat_server(host=SERVER_ADDR, prefix=inside) as fast, \
                nbchat_server(rate=config.latency_rate, host=SERVER_ADDR, prefix=inside) as paced:
            spec = {"config": dataclasses.asdict(config), "servers": {
                n: {"url": c.url, "token": c.token, "port": c.port} for n, c in
                (("raw", raw), ("fast", fast), ("paced", paced))}}
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", NS_CLIENT, sys.executable, "-m", "nbchat.bench.wan", json.dumps(spec),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 600)
    if proc.returncode != 0:
        raise RuntimeError(f"the WAN client failed: {err.decode(errors='replace')[-500:]}")
    data = json.loads(out)
    rows = [Row.from_dict(r) for r in data["rows"]]
    return Results(config={**data["config"], "wan": dataclasses.asdict(link)}, rows=rows)


async def _client(spec: dict[str, Any]) -> Results:
    """The client half: the single-stream scenarios against servers in the other namespace."""
    from .procs import Child
    from .runner import BenchConfig, _latency, _Run, _ttft

    options: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items()}
    config = BenchConfig(**options)
    results = Results(config=spec["config"])
    run = _Run(config, results, advance=lambda _what: None)
    run.servers.update({n: Child(None, **s) for n, s in spec["servers"].items()})
    await _ttft(run)
    await _latency(run)
    return results


def main() -> int:
    results = asyncio.run(_client(json.loads(sys.argv[1])))
    print(json.dumps(results.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
