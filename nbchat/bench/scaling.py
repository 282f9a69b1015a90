"""What N workers deliver against one, from the JSON of ``nbchat bench --server-cpus`` runs.

Each configuration is measured more than once, alternating with the other
(one worker, N workers, one, N), and each side's best saturation counts: a
busy machine only ever takes capacity away. The ratio means something only
where the load generator was not the limit: a best one-worker figure that
reached 90 % of raw TCP's ceiling in its run is no baseline (the ratio is not
given), and a best N-worker figure that did is a floor of what the workers
can serve, so its ratio is a lower bound: it shows a target it reaches and
cannot show one it misses.

    python -m nbchat.bench.scaling --one w1-1.json w1-2.json --many w2-1.json w2-2.json --target 1.9
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Saturation:
    """One run's saturation of a transport, beside raw TCP's in the same run (the generator's ceiling)."""

    path: str
    rate: float
    streams: int
    ceiling: float
    generator_bound: bool


def saturation(data: dict[str, Any], path: str = "", transport: str = "stream") -> Saturation:
    """A run's figures, from its JSON's ``capacity`` list."""
    found = {c["transport"]: c for c in data.get("capacity", [])}
    mine, raw = found.get(transport, {}), found.get("raw", {})
    rate = mine.get("saturation_rate")
    ceiling = raw.get("saturation_rate")
    return Saturation(path, math.nan if rate is None else float(rate), int(mine.get("saturation_streams") or 0),
                      math.nan if ceiling is None else float(ceiling), bool(mine.get("generator_bound")))


def best(runs: Sequence[Saturation]) -> Saturation | None:
    measured = [r for r in runs if not math.isnan(r.rate)]
    return max(measured, key=lambda r: r.rate, default=None)


def verdict(one: Sequence[Saturation], many: Sequence[Saturation], target: float) -> tuple[float, str]:
    """The ratio of the best of ``many`` to the best of ``one`` and what it shows against ``target``."""
    base, top = best(one), best(many)
    if base is None or top is None:
        return math.nan, "not measured"
    if base.generator_bound:
        return math.nan, "no ratio: the one-worker run was held back by the load generator"
    ratio = top.rate / base.rate
    if not top.generator_bound:
        return ratio, "PASS" if ratio >= target else "MISS"
    if ratio >= target:
        return ratio, "PASS (a lower bound: the load generator was the limit of the larger setup)"
    return ratio, "not shown: the load generator was the limit of the larger setup"


def report(one: Sequence[Saturation], many: Sequence[Saturation], target: float) -> str:
    lines = []
    for name, runs in (("one", one), ("many", many)):
        for r in runs:
            mark = ", the generator's limit" if r.generator_bound else ""
            lines.append(f"{name:4}  {r.rate:>9,.0f} chunks/s at {r.streams} streams (raw TCP's ceiling "
                         f"{r.ceiling:,.0f}{mark})  {r.path}")
    ratio, said = verdict(one, many, target)
    lines.append(f"best of each: {'-' if math.isnan(ratio) else f'{ratio:.2f}x'} (target {target:g}x): {said}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbchat.bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs="+", required=True, metavar="JSON", help="the one-worker runs")
    parser.add_argument("--many", nargs="+", required=True, metavar="JSON", help="the N-worker runs")
    parser.add_argument("--target", type=float, default=0.0, help="the ratio to show")
    parser.add_argument("--transport", default="stream")
    args = parser.parse_args(argv)

    def load(paths: list[str]) -> list[Saturation]:
        return [saturation(json.loads(Path(p).read_text()), p, args.transport) for p in paths]

    print(report(load(args.one), load(args.many), args.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
