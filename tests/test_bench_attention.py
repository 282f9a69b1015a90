"""The attention floor's table: medians per variant and history, and the last over the first."""

from __future__ import annotations

import pytest

from nbchat.bench.attention import HISTORIES, VARIANTS, table


def test_the_table_gives_medians_and_the_growth_of_each_variant() -> None:
    times = {(name, length): [length / 10 + 50 + i, 999.0 if length == HISTORIES[0] else length / 10 + 50, 0.0]
             for i, name in enumerate(VARIANTS) for length in HISTORIES}
    lines = table(times).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:-1]}
    assert [int(k) for k in rows] == list(HISTORIES)
    first = [float(x) for x in rows[str(HISTORIES[0])]]
    assert first == [HISTORIES[0] / 10 + 50 + i for i in range(len(VARIANTS))]  # the median, not the outlier
    growth = [float(x.rstrip("x")) for x in lines[-1].split()[3:]]
    expected = [(HISTORIES[-1] / 10 + 50) / (HISTORIES[0] / 10 + 50 + i) for i in range(len(VARIANTS))]
    assert growth == pytest.approx(expected, abs=0.006)
