"""The transport benchmark: ``nbchat bench`` and its Python API.

What each transport costs on top of a raw TCP stream on loopback: time to
first token, one-way latency per chunk, the jitter added to the server's
cadence, the top chunk rate of one stream, bytes per chunk, and latency
against the number of concurrent streams. The layout:

- :mod:`.stats` — percentiles and what one stream's timings say (pure);
- :mod:`.rawtcp` — the raw TCP floor (server and client);
- :mod:`.wire` — lean socket clients for every transport (the load generator);
- :mod:`.measure` — one stream into a trace, with either client;
- :mod:`.procs` — the servers as child processes;
- :mod:`.runner` — the scenarios (:class:`~.runner.BenchConfig`, :func:`~.runner.run_benchmark`);
- :mod:`.report` — rows, tables, targets, JSON and CSV;
- :mod:`.capacity` — the sweep's knee (latency and delivery) and saturation throughput;
- :mod:`.quota` — cgroup CPU quotas for the measured servers (``--server-cpus``);
- :mod:`.plots` — the figures (matplotlib, imported there only);
- :mod:`.buffering` — spotting a buffering proxy from emit and receive times;
- :mod:`.wan` — the comparison over an emulated WAN (network namespaces, netem);
- :mod:`.command` — the ``bench`` subcommand.

This module stays light: ``nbchat``'s command line imports it for the parser.
"""

from __future__ import annotations

from .command import add_bench_parser

__all__ = ["add_bench_parser"]
