"""The connection limits under load, against a real ``nbchat serve`` subprocess
(sized for a 2-core machine: a few hundred sockets, tens of MiB, under a minute
each). The figures themselves come from ``python tests/load_limits.py`` and are
in docs/security.md; these tests hold the bounds the limits promise."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.load_limits import (
    closed_by_server,
    connections_held,
    cpu_for_header,
    rss_non_reading,
    rss_ping_flood,
    serve,
    slow_head,
)

pytestmark = pytest.mark.slow


def test_slow_heads_close_at_the_deadline_while_health_answers() -> None:
    with serve(extra=["--header-timeout", "2", "--max-connections", "200"]) as server:
        socks = [slow_head(server.port) for _ in range(300)]  # past the cap: the oldest make room
        try:
            assert httpx.get(server.url + "/health", timeout=2).status_code == 200
            start = time.monotonic()
            while not all(closed_by_server(s) for s in socks) and time.monotonic() - start < 6:
                time.sleep(0.1)
            assert all(closed_by_server(s) for s in socks)
            assert time.monotonic() - start < 2.0 + 1.5  # the deadline, and the time to notice
            assert httpx.get(server.url + "/health", timeout=2).status_code == 200
        finally:
            for s in socks:
                s.close()


def test_connections_past_the_cap_never_starve_health() -> None:
    with serve(extra=["--max-connections", "150"]) as server:
        for opened, held, _ms in connections_held(server, [100, 300]):
            assert held <= 150, (opened, held)
        assert httpx.get(server.url + "/health", timeout=2).status_code == 200


def test_a_64_mib_head_is_refused_for_under_half_a_second_of_server_cpu() -> None:
    with serve() as server:
        cpu, status = cpu_for_header(server, 64 << 20)
        assert status.startswith("HTTP/1.1 431"), status
        assert cpu < 0.5, f"{cpu:.2f} s of server CPU"


def test_clients_that_never_read_hold_bounded_memory() -> None:
    with serve() as server:
        idle = server.rss_mib()
        # 20 turns of 256 KiB answers in 4-character pieces: ~11 MB of records each, unbounded
        rss = rss_non_reading(server, 20, 256 * 1024, settle=4)
        # each at most the 8 MiB replay bound, plus socket buffers and the interpreter's slack
        assert rss - idle < 20 * 8 + 64, f"{rss:.0f} MiB with 20 non-reading clients (idle {idle:.0f})"


def test_ping_flooding_clients_hold_bounded_memory() -> None:
    with serve(extra=["--max-queued-bytes", str(256 * 1024)]) as server:
        idle = server.rss_mib()
        rss = rss_ping_flood(server, 10, 8)  # 80 MB of pings, none of the pongs read
        assert rss - idle < 10 * 0.25 + 32, f"{rss:.0f} MiB after the ping flood (idle {idle:.0f})"
