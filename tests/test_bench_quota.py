"""``nbchat bench --server-cpus``: a cgroup CPU quota per measured server tree, removed afterwards.

The real tests need root and a writable cgroup ``cpu`` controller; where there is none they are
skipped with the reason, except under CI (``CI=true``, as ``.ci/run`` sets it), whose machines have one:
there they fail.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbchat.bench import quota
from nbchat.bench.command import add_bench_parser, run_bench
from nbchat.bench.procs import descendants
from nbchat.bench.quota import CpuController, QuotaUnavailable, cpu_quota, explain, find_cpu_controller
from nbchat.bench.runner import BenchConfig, measured_server
from tests.conftest import MISSING, RedisProcess
from tests.helpers import ROOT, bench_command, tree_cpu_seconds


def writable_controller() -> CpuController:
    """The machine's cpu controller, if a group can be made in it; else skip for a missing tool (which fails
    under CI, as every such skip does: see tests/conftest.py)."""
    try:
        with cpu_quota(0.5) as found:
            return found.controller
    except QuotaUnavailable as exc:
        pytest.skip(f"{MISSING}a writable cgroup cpu controller (root, cgroup v2): {exc}")


def groups(controller: CpuController) -> set[str]:
    """The benchmark's groups now. A test holds that none was added (``<=`` what it saw before): a
    benchmark running beside it on the machine may remove its own group meanwhile."""
    return {p.name for p in controller.path.glob(f"{quota.PREFIX}*")}


# A parent that starts two CPU-bound children, then spins itself: three busy processes, as
# `nbchat serve --workers 2` is a parent and its workers.
BUSY_TREE = """
import subprocess, sys, time
spin = "import time\\nend = time.time() + 30\\nwhile time.time() < end: pass"
children = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
print("busy", flush=True)
end = time.time() + 30
while time.time() < end:
    pass
"""


async def tree_share(held: quota.CpuQuota, seconds: float) -> tuple[float, list[int], list[int]]:
    """The busy tree's CPU in cores over ``seconds`` (from /proc), the pids of the tree and of the group."""
    proc = await asyncio.create_subprocess_exec(*held.prefix(), sys.executable, "-c", BUSY_TREE,
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"busy\n"
        tree = [proc.pid, *descendants(proc.pid)]
        used, began = tree_cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(seconds)
        share = (tree_cpu_seconds(proc.pid) - used) / (time.monotonic() - began)
        return share, tree, held.pids()
    finally:
        for pid in descendants(proc.pid):
            os.kill(pid, 9)
        proc.kill()
        await proc.wait()


async def test_a_capped_process_tree_stays_within_its_cores() -> None:
    controller = writable_controller()
    before = groups(controller)
    with cpu_quota(0.4, controller) as held:
        share, tree, members = await tree_share(held, 3.0)
        # every process of the tree, the children included, was in the group from its start
        assert len(tree) == 3 and set(tree) == set(members)
        path = held.path
    # 0.4 cores for three spinning processes (uncapped they would take the machine); 10 ms /proc
    # ticks and the one CFS period a burst may overrun are the tolerance
    assert 0.05 < share <= 0.4 * 1.1, share
    assert not path.exists() and groups(controller) <= before


def test_the_group_goes_also_when_the_run_fails() -> None:
    controller = writable_controller()
    before = groups(controller)
    with pytest.raises(KeyboardInterrupt), cpu_quota(0.2, controller) as held:
        spinner = subprocess.Popen([*held.prefix(), sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)
        assert held.pids() == [spinner.pid]
        raise KeyboardInterrupt  # Ctrl-C with a process still in the group: it is killed, the group removed
    assert spinner.wait(5) == -9 and groups(controller) <= before


def group_of(pid: int, controller: CpuController) -> Path:
    """The cgroup ``pid`` is in, in the hierarchy of ``controller`` (from /proc/PID/cgroup)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, where = line.split(":", 2)
        if (controller.version == 2 and names == "") or (controller.version == 1 and "cpu" in names.split(",")):
            return controller.path / where.lstrip("/")
    raise AssertionError(f"process {pid} is in no cpu cgroup")


def limit_of(group: Path, controller: CpuController) -> tuple[float, int]:
    """The group's quota in cores and its weight in processes."""
    if controller.version == 2:
        quota, period = (group / "cpu.max").read_text().split()
        return int(quota) / int(period), int((group / "cpu.weight").read_text()) // 100
    cores = int((group / "cpu.cfs_quota_us").read_text()) / int((group / "cpu.cfs_period_us").read_text())
    return cores, int((group / "cpu.shares").read_text()) // 1024


@pytest.mark.redis
async def test_every_worker_of_a_measured_server_is_in_its_capped_group(redis_server: RedisProcess) -> None:
    controller = writable_controller()
    config = BenchConfig(server_cpus=0.25, serve_args=("--store", redis_server.url, "--workers", "2"))
    async with measured_server(config, 20.0, config.serve_args) as server:
        assert server.process is not None
        tree = [server.process.pid, *descendants(server.process.pid)]
        homes = {group_of(pid, controller) for pid in tree}
        assert len(tree) >= 3 and len(homes) == 1  # the supervisor and both workers: one group
        group = homes.pop()
        assert group.name.startswith(quota.PREFIX)
        assert limit_of(group, controller) == (0.5, 2)  # 2 workers x 0.25 cores, weighed as two processes
    assert not group.exists()  # removed once the server stopped


@pytest.mark.slow
def test_server_cpus_runs_the_benchmark_capped_and_leaves_no_group(tmp_path: Path) -> None:
    controller = writable_controller()
    before = groups(controller)
    out = tmp_path / "bench.json"
    proc = bench_command("--transports", "stream", "--concurrency", "4", "--seconds", "0.5", "--server-cpus", "0.5",
                         "--json", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "each nbchat server held to 0.5 cores, raw TCP uncapped" in proc.stdout
    assert "the load generator's ceiling" in proc.stdout
    data = json.loads(out.read_text())
    assert data["config"]["server_cpus"] == 0.5 and {c["transport"] for c in data["capacity"]} == {"raw", "stream"}
    assert groups(controller) <= before


# ---------------------------------------------------------------- where quotas cannot be set


def mountinfo(tmp_path: Path, *mounts: tuple[str, str, str]) -> str:
    lines = [f"{30 + i} 23 0:{i} / {point} rw,relatime - {kind} {kind} {options}"
             for i, (point, kind, options) in enumerate(mounts)]
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_the_cpu_controller_is_found_v2_first(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    hybrid = mountinfo(tmp_path, (str(tmp_path / "unified"), "cgroup2", "rw"),
                       ("/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"))
    # cgroup2 mounted without the cpu controller (a hybrid setup): v1's is the one to use
    assert find_cpu_controller(hybrid) == CpuController(Path("/sys/fs/cgroup/cpu,cpuacct"), 1)
    (tmp_path / "unified" / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert find_cpu_controller(hybrid) == CpuController(tmp_path / "unified", 2)
    with pytest.raises(QuotaUnavailable, match="no cgroup hierarchy here has the cpu controller"):
        find_cpu_controller(mountinfo(tmp_path, ("/sys/fs/cgroup/memory", "cgroup", "rw,memory")))


@pytest.mark.parametrize(("version", "files"), [
    (1, {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "60000", "cpu.shares": "2048"}),
    (2, {"cpu.max": "60000 100000", "cpu.weight": "200"}),
])
def test_what_a_quota_writes_on_each_version(tmp_path: Path, version: int, files: dict[str, str]) -> None:
    held = quota.CpuQuota(CpuController(tmp_path, version), 0.6, processes=2)
    held.create()
    assert held.path.parent == tmp_path and held.path.name.startswith(f"{quota.PREFIX}{os.getpid()}-")
    assert {f.name: f.read_text() for f in held.path.iterdir()} == files
    # v2 hands the cpu controller down to the new group; v1 has no such switch
    assert (tmp_path / "cgroup.subtree_control").exists() == (version == 2)
    assert held.prefix()[-1] == str(held.path / "cgroup.procs")
    with pytest.raises(ValueError, match=r"at least 0\.01 cores"):
        quota.CpuQuota(CpuController(tmp_path, version), 0.005)


def test_unwritable_cgroups_get_a_message_that_says_what_to_do() -> None:
    where = Path("/sys/fs/cgroup/cpu")
    read_only = str(explain(OSError(errno.EROFS, "Read-only file system"), where))
    assert "mounted read-only" in read_only and "Run without --server-cpus" in read_only
    assert "run the benchmark as root" in str(explain(PermissionError(errno.EACCES, "Permission denied"), where))


def test_a_user_who_is_not_root_is_told_what_to_do() -> None:
    writable_controller()
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    # the real thing as user nobody: the cgroup files are root's
    snippet = ("from nbchat.bench.quota import QuotaUnavailable, cpu_quota\n"
               "try:\n    cpu_quota(0.3).__enter__()\nexcept QuotaUnavailable as exc:\n    print(exc)\n")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                           snippet], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "permission denied: run the benchmark as root, or in a cgroup delegated to your user" in done.stdout


def test_the_command_says_why_and_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def unavailable() -> CpuController:
        raise explain(OSError(errno.EROFS, "Read-only file system"), Path("/sys/fs/cgroup/cpu"))

    monkeypatch.setattr(quota, "find_cpu_controller", unavailable)
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--quick", "--no-progress", "--transports", "ws", "--server-cpus", "0.3"])
    assert run_bench(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("nbchat bench: --server-cpus: cannot set a CPU quota in /sys/fs/cgroup/cpu")
    assert "Traceback" not in err
    for bad in ("0", "-1", "lots"):
        with pytest.raises(SystemExit):
            parser.parse_args(["bench", "--server-cpus", bad])


@pytest.mark.slow
def test_ctrl_c_mid_run_removes_the_groups() -> None:
    controller = writable_controller()
    before = groups(controller)
    bench = subprocess.Popen(
        [sys.executable, "-m", "nbchat.cli.main", "bench", "--quick", "--no-progress", "--transports", "stream",
         "--concurrency", "50", "--seconds", "30", "--server-cpus", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        # a shell's background job starts with SIGINT ignored: give the benchmark Python's own handler back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while len(groups(controller) - before) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)  # the three capped servers' groups appear as the run starts them
    assert len(groups(controller) - before) == 3
    bench.send_signal(signal.SIGINT)
    _, err = bench.communicate(timeout=60)
    assert bench.returncode == 130 and "nbchat bench: interrupted" in err
    assert groups(controller) <= before
