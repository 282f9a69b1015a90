"""The command line: ``nbchat serve`` (the contract's server), ``chat``, ``bench`` and ``doctor``."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from urllib.parse import quote

from ..backends import BACKEND_NAMES
from ..backends.echo import DEFAULT_RATE
from ..server.config import HUB_MAX_USER_TURNS, HUB_USER_TURNS_PER_MINUTE, Settings

LIMIT_OPTIONS = ("max_body_bytes", "header_timeout", "max_header_bytes", "max_connections", "max_queued_bytes")


def serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the streaming chat server",
                       description="Run the nbchat streaming chat server (WebSocket, SSE, NDJSON, OpenAI-compatible).")
    d = Settings()  # the defaults live there, once
    p.add_argument("--host", default=None,
                   help=f"bind address (default: {d.host}, loopback only; with --jupyterhub, the host of "
                        "$JUPYTERHUB_SERVICE_URL)")
    p.add_argument("--port", type=int, default=None,
                   help=f"port (0 picks a free one; default: {d.port}, with --jupyterhub $JUPYTERHUB_SERVICE_URL's)")
    p.add_argument("--jupyterhub", action="store_true",
                   help="run as a JupyterHub service: serve under $JUPYTERHUB_SERVICE_PREFIX to the Hub's users, "
                        "authenticated by the Hub (no nbchat token; see docs/deployment.md)")
    p.add_argument("--token", default=None,
                   help="access token; without it a random one is made and printed; --token '' turns auth off")
    p.add_argument("--public-without-token", action="store_true",
                   help="allow --token '' with a non-loopback --host (anyone reaching the port may use the server)")
    p.add_argument("--backend", choices=BACKEND_NAMES, default=d.backend,
                   help="smollm2 (embedded model, default), echo (deterministic), openai (OPENAI_BASE_URL), "
                        "replay (a recorded answer, --replay)")
    p.add_argument("--rate", type=float, default=None,
                   help=f"pieces per second (0 = as fast as possible): echo (default {DEFAULT_RATE:g}), replay "
                        "(default: the recorded pace)")
    p.add_argument("--record", metavar="DIR", default=None,
                   help="write each turn's chunks with their server times to DIR, one JSON Lines file per turn")
    p.add_argument("--record-max-mb", type=float, default=d.record_max_mb, metavar="N",
                   help="bound the --record directory to N MiB, removing the oldest recordings (0: no bound; "
                        "default %(default)g)")
    p.add_argument("--replay", metavar="FILE", default=None,
                   help="replay backend: the recording to stream back (a file, or a directory played in turn)")
    p.add_argument("--model", default=None, help="model id for the openai backend")
    p.add_argument("--gguf", metavar="PATH", default=None,
                   help="smollm2 backend: run this GGUF model file instead of the packaged SmolLM2-135M-Instruct, "
                        "in the same supervised model process (default: $NBCHAT_GGUF)")
    p.add_argument("--threads", type=int, default=None,
                   help="smollm2 backend: llama.cpp decoding threads (default: half the cores; prompts use all)")
    p.add_argument("--cache-mb", type=float, default=None, metavar="N",
                   help="smollm2 backend: memory for other conversations' evaluated state, so switching among "
                        "them does not re-read their histories (default: $NBCHAT_CACHE_MB, else 256; 0 keeps none)")
    p.add_argument("--exact-cache", action="store_true", default=None,
                   help="smollm2 backend: reuse only what a fresh evaluation computes, so greedy answers never "
                        "depend on earlier turns (default: $NBCHAT_EXACT_CACHE; slower: each answer is read again)")
    p.add_argument("--model-timeout", type=float, default=d.model_timeout,
                   help="end a turn with [MODEL_TIMEOUT] when the backend yields nothing this long (seconds)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also allow this Origin (repeatable; '*' allows any)")
    p.add_argument("--grace-period", type=float, default=d.grace_period,
                   help="seconds a turn keeps generating after its last client leaves, for a reattach")
    p.add_argument("--store", default=d.store, metavar="redis://HOST:PORT/DB",
                   help="keep turns in Redis, shared by every process given the same URL (resume, Stop and the "
                        "uid's queued turn then work on whichever process a request lands on); default: in memory")
    p.add_argument("--lease-seconds", type=float, default=d.lease_seconds, metavar="SECONDS",
                   help="with --store: a process's lease, renewed every third of it; the turns of a process that "
                        "stops renewing end with [ERROR] after this long (default %(default)g)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N server processes on the one port (needs --store: they share the turns there; "
                        "each worker loads its own model)")
    p.add_argument("--start-timeout", type=float, default=None, metavar="SECONDS",
                   help="with --workers: stop every worker and exit with an error when one does not accept "
                        "connections within this long (default: 180, room for each worker to load its model)")
    hub = p.add_argument_group("per user, with --jupyterhub", "a fair share of the model for each Hub user "
                               "(docs/deployment.md); with --store, counted across processes")
    hub.add_argument("--max-user-turns", type=int, default=None, metavar="N",
                     help=f"turns one user may hold at once, running or queued; over it: 429 (default "
                          f"{HUB_MAX_USER_TURNS}; 0: no bound)")
    hub.add_argument("--user-turns-per-minute", type=float, default=None, metavar="N",
                     help=f"turns one user may begin per minute; over it: 429 (default {HUB_USER_TURNS_PER_MINUTE:g}; "
                          "0: no bound)")
    hub.add_argument("--fair-slots", type=int, default=None, metavar="N",
                     help="turns generating at once, the others waiting in one queue per user, served user by user "
                          "in turn (default: 1 for the embedded model, else 0; 0: no fair queue, first come first "
                          "served)")
    hub.add_argument("--hub-auth-cache", type=int, default=d.hub_auth_cache, metavar="SECONDS",
                     help="how long each process keeps the Hub's answer for a token: a token the Hub revokes is "
                          "refused here after at most this long (default %(default)s, the Hub's own; 0: ask "
                          "the Hub on every request)")
    limits = p.add_argument_group("limits", "what one client may hold or send (see docs/security.md)")
    limits.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, metavar="N",
                        help="largest request body or WebSocket message; over it: 413 or close 1009 "
                             "(default %(default)s)")
    limits.add_argument("--header-timeout", type=float, default=d.header_timeout, metavar="SECONDS",
                        help="a request head must be complete this soon after it began, else 408 (default %(default)s)")
    limits.add_argument("--max-header-bytes", type=int, default=d.max_header_bytes, metavar="N",
                        help="largest request head (request line and headers); over it: 431 (default %(default)s)")
    limits.add_argument("--max-connections", type=int, default=d.max_connections, metavar="N",
                        help="connections held at once; at the limit the slowest one still sending its head "
                             "is closed to make room (default %(default)s)")
    limits.add_argument("--max-queued-bytes", type=int, default=d.max_queued_bytes, metavar="N",
                        help="bytes queued for a client that does not read before it is dropped (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run_serve(args: argparse.Namespace) -> int:
    from ..server.auth import public_bind_refusal
    from ..server.serving import NBChatServer, make_server, serve_here

    if args.threads is not None and args.threads < 1:
        print("nbchat serve: --threads must be >= 1", file=sys.stderr)
        return 2
    if args.cache_mb is not None and not args.cache_mb >= 0:
        print("nbchat serve: --cache-mb must be 0 or more", file=sys.stderr)
        return 2
    problem = hub_problem(args) or model_file_problem(args.backend, args.gguf)
    if problem:
        print(f"nbchat serve: {problem}", file=sys.stderr)
        return 2
    refusal = public_bind_refusal(args.host or Settings.host, args.token, args.public_without_token)
    if refusal is not None and not args.jupyterhub:
        print(f"nbchat serve: {refusal}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("nbchat serve: --workers must be >= 1", file=sys.stderr)
        return 2
    if args.start_timeout is not None and not args.start_timeout > 0:
        print("nbchat serve: --start-timeout must be more than 0", file=sys.stderr)
        return 2
    if args.workers > 1 and not args.store:
        print(f"nbchat serve: --workers {args.workers} needs --store redis://HOST:PORT/DB: each worker is a process "
              "with its own memory, so a resume, a Stop or a queued turn that lands on another worker than the one "
              "holding the turn would not find it. Give the workers a shared store, or run one process.",
              file=sys.stderr)
        return 2
    try:
        settings = settings_from(args)
    except ValueError as exc:  # Settings checks every value: say it in the option's name
        print(f"nbchat serve: {_as_option(str(exc))}", file=sys.stderr)
        return 2

    def announce_port(port: int) -> None:
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        url = f"http://{host}:{port}/"
        if settings.jupyterhub:
            url += args.hub_prefix.lstrip("/") + " for JupyterHub"
        elif settings.token:
            url += f"?token={quote(settings.token)}"
        workers = f" ({args.workers} workers)" if args.workers > 1 else ""
        print(f"nbchat serving {settings.backend} at {url}{workers}", flush=True)

    if args.workers > 1:
        return run_workers(settings, args.workers, args.log_level, announce_port, args.start_timeout)
    try:
        server = make_server(settings, log_level=args.log_level)
    except Exception as exc:  # a backend that cannot be built: one clear line
        print(f"nbchat serve: {exc}", file=sys.stderr)
        return 1

    def announce(srv: NBChatServer) -> None:
        announce_port(srv.port)

    server.on_ready = announce
    serve_here(server)
    return 0 if server.started else 1


def hub_problem(args: argparse.Namespace) -> str | None:
    """What keeps ``--jupyterhub`` from running with these options (or None); fills in its bind address."""
    if not args.jupyterhub:
        given = [name for name in ("max_user_turns", "user_turns_per_minute", "fair_slots")
                 if getattr(args, name) is not None]
        return f"--{given[0].replace('_', '-')} goes with --jupyterhub (it shares the model among Hub users)" \
            if given else None
    if args.token:
        return "--token goes unused with --jupyterhub: the Hub authenticates every request"
    try:
        from ..server.hub import HubService

        service = HubService.from_environ()
    except ImportError:
        return "--jupyterhub needs the jupyterhub package: pip install -e '.[hub]'"
    except ValueError as exc:
        return str(exc)
    host, port = service.bind()
    args.hub_prefix = service.prefix
    args.host = args.host or host
    args.port = args.port if args.port is not None else port
    return None


def model_file_problem(backend: str, gguf: str | None) -> str | None:
    """What is wrong with the GGUF file named by ``--gguf`` or ``NBCHAT_GGUF``, said before the server starts."""
    from pathlib import Path

    from ..backends.gguf import gguf_problem
    from ..backends.smollm2 import ENV_GGUF, named_gguf

    if gguf is not None and backend != "smollm2":
        return f"--gguf runs a model file on the smollm2 backend, not on --backend {backend}"
    path, source = (Path(gguf).expanduser(), "--gguf") if gguf is not None else (named_gguf(), ENV_GGUF)
    if backend != "smollm2" or path is None:
        return None
    problem = gguf_problem(path)
    return f"{source}: {problem}" if problem else None


def settings_from(args: argparse.Namespace) -> Settings:
    """The server's settings from ``nbchat serve``'s options (ValueError for a value Settings refuses)."""
    options = {name: value for name, value in (("n_threads", args.threads), ("cache_mb", args.cache_mb),
                                               ("exact", args.exact_cache), ("model_path", args.gguf))
               if value is not None}
    limits = {name: getattr(args, name) for name in LIMIT_OPTIONS}
    defaults = Settings()
    return Settings(host=args.host or defaults.host, port=defaults.port if args.port is None else args.port,
                    token=args.token, backend=args.backend, jupyterhub=args.jupyterhub,
                    max_user_turns=args.max_user_turns, user_turns_per_minute=args.user_turns_per_minute,
                    fair_slots=args.fair_slots, hub_auth_cache=args.hub_auth_cache,
                    rate=DEFAULT_RATE if args.rate is None else args.rate, replay_rate=args.rate,
                    record=args.record, record_max_mb=args.record_max_mb, replay=args.replay,
                    public_without_token=args.public_without_token,
                    model=args.model or os.environ.get("OPENAI_MODEL"), model_timeout=args.model_timeout,
                    allow_origins=tuple(args.allow_origin), grace_period=args.grace_period,
                    store=args.store, lease_seconds=args.lease_seconds, backend_options=options,
                    **limits).with_token()


def _as_option(message: str) -> str:
    """``Settings.max_body_bytes must ...`` -> ``--max-body-bytes must ...``; replay_rate is --rate's too."""
    message = message.replace("Settings.replay_rate", "Settings.rate")
    return re.sub(r"Settings\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), message)


def run_workers(settings: Settings, workers: int, log_level: str, announce: Callable[[int], None],
                start_timeout: float | None = None) -> int:
    from ..server.workers import START_TIMEOUT, Supervisor

    try:
        supervisor = Supervisor(settings, workers, log_level, start_timeout or START_TIMEOUT)
    except OSError as exc:
        print(f"nbchat serve: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    return supervisor.run(announce)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbchat", description="Stream a language model's answer live into Jupyter.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser(sub)
    from .chat import add_chat_parser

    add_chat_parser(sub)
    from ..bench import add_bench_parser

    add_bench_parser(sub)
    from .doctor import add_doctor_parser

    add_doctor_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return run_serve(args)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.error(f"unknown command {args.command}")
    code: int = handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
