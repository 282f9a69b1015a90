"""CPU quotas for the benchmark's servers: one cgroup per measured process tree.

``nbchat bench --server-cpus C`` holds each ``nbchat serve`` to C cores per
worker. On a small machine the servers, Redis and the load generator all
compete for the same cores, so a second worker has nothing to add; held to a
quota, each worker has a share of its own, and what a second one adds can be
measured.

The quota is the kernel's CFS bandwidth limit: ``cpu.max`` on cgroup v2,
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` on v1, whichever hierarchy has
the ``cpu`` controller. A child enters its group before Python starts (a
shell writes its own pid into ``cgroup.procs``, then execs the server), so
the workers it forks later are in the group from their first instruction.
Where the machine is busy the group competes for CPU as one scheduling
entity, so its weight is that of the processes it holds (a group of two
workers weighs as much as two processes outside it would).
Groups are named ``nbchat-bench-<pid>-<random>``; on the way out the processes
left in one are killed and the group removed, and groups left by a run that
was itself killed are removed by the next.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("nbchat.bench.quota")

PERIOD_US = 100_000  # the kernel's default CFS period
WEIGHT = {1: ("cpu.shares", 1024), 2: ("cpu.weight", 100)}  # one process's weight: the default
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller quota
PREFIX = "nbchat-bench-"
EMPTY_TIMEOUT = 5.0  # seconds a killed process may take to leave its group


class QuotaUnavailable(RuntimeError):
    """CPU quotas cannot be set here; the message says why and what would allow them."""


@dataclass(frozen=True)
class CpuController:
    """Where groups with a CPU quota are made: a cgroup directory and its hierarchy's version (1 or 2)."""

    path: Path
    version: int


def find_cpu_controller(mountinfo: str = "/proc/self/mountinfo") -> CpuController:
    """The hierarchy holding the ``cpu`` controller, v2 first (from the mount table)."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError as exc:
        raise QuotaUnavailable(f"cannot read {mountinfo} ({exc.strerror}): CPU quotas need Linux cgroups") from None
    v1 = v2 = None
    for line in lines:
        # "<id> <parent> <dev> <root> <mount point> <options> [optional fields] - <type> <source> <super options>"
        before, _, after = line.partition(" - ")
        fields, kinds = before.split(), after.split()
        if len(fields) < 5 or len(kinds) < 3:
            continue
        point = Path(fields[4])
        if kinds[0] == "cgroup2" and v2 is None and "cpu" in _words(point / "cgroup.controllers"):
            v2 = CpuController(point, 2)
        elif kinds[0] == "cgroup" and v1 is None and "cpu" in kinds[2].split(","):
            v1 = CpuController(point, 1)
    found = v2 or v1
    if found is None:
        raise QuotaUnavailable("no cgroup hierarchy here has the cpu controller (mount cgroup2, or the v1 cpu "
                               "controller, at /sys/fs/cgroup)")
    return found


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def explain(exc: OSError, where: Path) -> QuotaUnavailable:
    """The error an operator can act on, for a cgroup file that could not be written."""
    if exc.errno == errno.EROFS:
        why = "the cgroup filesystem is mounted read-only (a container without a writable /sys/fs/cgroup)"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied: run the benchmark as root, or in a cgroup delegated to your user"
    else:
        why = exc.strerror or str(exc)
    return QuotaUnavailable(f"cannot set a CPU quota in {where}: {why}. Run without --server-cpus to measure "
                            "the servers uncapped.")


class CpuQuota:
    """One cgroup holding whatever enters it to ``cores`` CPUs (0.5: half of one core), weighted as
    ``processes`` processes where CPU is contended."""

    def __init__(self, controller: CpuController, cores: float, processes: int = 1) -> None:
        if cores * PERIOD_US < MIN_QUOTA_US:
            raise ValueError(f"a CPU quota must be at least {MIN_QUOTA_US / PERIOD_US:g} cores, not {cores:g}")
        self.cores = cores
        self.processes = processes
        self.controller = controller
        self.path = controller.path / f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"

    def create(self) -> None:
        quota = round(self.cores * PERIOD_US)
        try:
            if self.controller.version == 2:
                _enable_cpu(self.controller.path)
            self.path.mkdir()
            if self.controller.version == 2:
                (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            if self.processes > 1:
                name, one = WEIGHT[self.controller.version]
                (self.path / name).write_text(str(min(one * self.processes, 10_000)))
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.rmdir()
            raise explain(exc, self.path if self.path.exists() else self.controller.path) from exc

    def prefix(self) -> tuple[str, ...]:
        """A command prefix that runs the command inside this group from its start."""
        return ("sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"))

    def pids(self) -> list[int]:
        return [int(p) for p in _words(self.path / "cgroup.procs")]

    def remove(self) -> None:
        """Kill what is left in the group, then remove it (a group with processes cannot be removed)."""
        deadline = time.monotonic() + EMPTY_TIMEOUT
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)  # the kernel takes a killed process out of the group as it exits; nothing to await
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the cgroup %s: %s", self.path, exc.strerror)


def _enable_cpu(parent: Path) -> None:
    # v2: a group's cpu files exist only where its parent hands the controller down
    control = parent / "cgroup.subtree_control"
    if "cpu" not in _words(control):
        control.write_text("+cpu")


def remove_stale(controller: CpuController) -> None:
    """Remove empty groups left by benchmark runs that were killed before they could clean up."""
    for group in controller.path.glob(f"{PREFIX}*"):
        owner = group.name[len(PREFIX):].split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(OSError):
                group.rmdir()


@contextlib.contextmanager
def cpu_quota(cores: float, controller: CpuController | None = None, processes: int = 1) -> Iterator[CpuQuota]:
    """A cgroup limited to ``cores`` CPUs, removed on the way out (also on an error or Ctrl-C)."""
    controller = controller or find_cpu_controller()
    remove_stale(controller)
    quota = CpuQuota(controller, cores, processes)
    quota.create()
    try:
        yield quota
    finally:
        quota.remove()
