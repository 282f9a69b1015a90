"""The ``nbchat bench`` subcommand: options in, tables (and JSON/CSV) out.

Only argparse at import: the command line builds this parser on every run.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..wire.contract import TRANSPORTS, transport_name

if TYPE_CHECKING:
    from .runner import BenchConfig

DESCRIPTION = """\
Benchmark nbchat's transports on loopback against a raw TCP stream measured in
the same run: time to first token, one-way latency per chunk (p50/p99), the
jitter each transport adds, the top chunk rate of one stream, bytes per chunk,
and latency against concurrent streams (up to 500 at 20 chunks/s). Servers run
as child processes (`nbchat serve --backend echo`), so client and server never
share an event loop. --quick takes well under a minute. --server-cpus C holds
each server to C cores per worker (a cgroup CPU quota), so that what a second
worker adds shows on a small machine."""


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("stream counts must be positive integers")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value}")
    return value


def _cores(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number of cores (0.3, 1, 1.5), not {text!r}") from exc
    if not 0.01 <= value <= 1024:  # the kernel's smallest quota is 1 ms per 100 ms period
        raise argparse.ArgumentTypeError(f"expected a number of cores from 0.01 up, not {value:g}")
    return value


def _transports(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    try:
        canonical = tuple(transport_name(n) for n in names)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not canonical:
        raise argparse.ArgumentTypeError(f"name transports: {', '.join(TRANSPORTS)}")
    return canonical


def add_bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmark the transports against raw TCP on loopback",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run (CI): fewer chunks, concurrency 1 and 50")
    p.add_argument("--transports", type=_transports, default=None, metavar="LIST",
                   help="comma-separated subset of ws,sse,stream,openai (default: all)")
    p.add_argument("--concurrency", type=_ints, default=None, metavar="N,N,...",
                   help="stream counts of the concurrency sweep (default 1,10,100,500; --quick 1,50)")
    p.add_argument("--seconds", type=float, default=None,
                   help="how long each concurrent stream runs (default 5; --quick 1.5)")
    p.add_argument("--rate", type=float, default=None, help="chunks/s per concurrent stream (default 20)")
    p.add_argument("--rounds", type=_positive, default=None, metavar="N",
                   help="the concurrency sweep measures each point N times, taking raw TCP and the transports in "
                        "turn (each transport between two raw TCP windows), so that load from elsewhere falls on all "
                        "alike; figures pooled, the CPU ratio is the median of the rounds' ratios (default 1)")
    p.add_argument("--paired", action="store_true",
                   help="each transport's window of the concurrency sweep streams at the same time as a raw TCP "
                        "window of as many streams, the two servers sharing one core and the load generator on the "
                        "others; the CPU ratio is taken window by window, so load that comes and goes falls on both "
                        "(not with --load-procs or --server-cpus)")
    p.add_argument("--model", action="store_true",
                   help="also measure the embedded smollm2 model's real cadence (skipped if unavailable)")
    p.add_argument("--client", choices=["wire", "nbchat"], default="wire",
                   help="wire: lean socket clients (default); nbchat: nbchat.clients (httpx, websockets)")
    p.add_argument("--store", metavar="redis://HOST:PORT/DB", default="",
                   help="measure servers sharing their turns in this Redis (nbchat serve --store)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="measure servers of N processes (nbchat serve --workers; needs --store)")
    p.add_argument("--server-cpus", type=_cores, default=0.0, metavar="C",
                   help="hold each measured nbchat server to C cores per worker (C x N with --workers N) with a "
                        "cgroup CPU quota, so that what a worker adds can be measured on a small machine; raw TCP "
                        "stays uncapped (its delivered rate is the load generator's ceiling). Needs root and a "
                        "writable cgroup cpu controller")
    p.add_argument("--load-procs", type=_positive, default=1, metavar="N",
                   help="spread the concurrency sweep's streams over N load generator processes (default 1: "
                        "this one), for servers that one process cannot drive")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--csv", metavar="PATH", help="also write the result rows as CSV")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_bench)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from .runner import BenchConfig

    serve_args = (("--store", args.store) if args.store else ()) + (("--workers", str(args.workers))
                                                                     if args.workers > 1 else ())
    overrides: dict[str, Any] = {"model": args.model, "client": args.client, "progress": not args.no_progress,
                                 "serve_args": serve_args, "server_cpus": args.server_cpus,
                                 "load_procs": args.load_procs, "paired": args.paired}
    for key, value in (("transports", args.transports), ("concurrency", args.concurrency),
                       ("concurrency_seconds", args.seconds), ("concurrency_rate", args.rate),
                       ("rounds", args.rounds)):
        if value is not None:
            overrides[key] = value
    return BenchConfig.quick(**overrides) if args.quick else BenchConfig(**overrides)


def run_bench(args: argparse.Namespace) -> int:
    from .quota import QuotaUnavailable
    from .runner import run

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"nbchat bench: {exc}", file=sys.stderr)
        return 2
    try:
        results = run(config)
    except KeyboardInterrupt:
        print("nbchat bench: interrupted", file=sys.stderr)
        return 130
    except QuotaUnavailable as exc:
        print(f"nbchat bench: --server-cpus: {exc}", file=sys.stderr)
        return 2
    print(results.table())
    if args.json:
        results.write_json(args.json)
    if args.csv:
        results.write_csv(args.csv)
    return 1 if any(r.errors for r in results.rows) else 0
