"""``nbchat chat``: stream one answer to the terminal.

With no ``--server`` and no ``NBCHAT_URL`` it starts a server in this process
on a free loopback port (the embedded model by default), so one command on a
fresh machine shows a real answer streaming. ``NBCHAT_URL`` is read as the
notebook reads it (:func:`~nbchat.notebook.kernel_server.environment_endpoint`):
in a JupyterHub user's terminal it reaches the Hub's service with the Hub's token.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING

from ..server.config import Settings
from ..wire.contract import DEFAULT_MAX_TOKENS, TRANSPORTS
from ..wire.errors import NBChatError
from ..wire.events import Chunk, Status

if TYPE_CHECKING:
    from ..clients import TurnStream


def add_chat_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chat", help="stream one answer to the terminal",
                       description="Ask one question and stream the answer as it arrives.")
    p.add_argument("message", help="the question")
    p.add_argument("--server", default=None,
                   help="a running nbchat server (default: $NBCHAT_URL, else start one in this process)")
    p.add_argument("--token", default=None,
                   help="the server's token (default: $NBCHAT_TOKEN; for $NBCHAT_URL on a JupyterHub, "
                        "$JUPYTERHUB_API_TOKEN)")
    p.add_argument("--transport", "-t", default="ws", choices=[*TRANSPORTS, "ndjson"])
    p.add_argument("--backend", default="smollm2", choices=["smollm2", "echo", "openai"],
                   help="backend of the in-process server (ignored with --server)")
    p.add_argument("--threads", type=int, default=None,
                   help="smollm2 backend of the in-process server: llama.cpp threads")
    p.add_argument("--system", default=None, help="a system prompt")
    p.add_argument("--temperature", type=float, default=None,
                   help="0 to 2 (default: what the server's backend suits its model, sent only when set)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    p.set_defaults(handler=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    from ..clients import connect
    from ..notebook.kernel_server import ENV_TOKEN, ENV_URL, environment_endpoint

    handle = None
    url, token = args.server, args.token if args.token is not None else os.environ.get(ENV_TOKEN)
    if url is None and os.environ.get(ENV_URL):
        endpoint = environment_endpoint(os.environ[ENV_URL], args.token)
        url, token = endpoint.url, endpoint.token
    try:
        if url is None:
            from ..server.serving import start_server_thread

            print(f"starting an in-process server with the {args.backend} backend ...", file=sys.stderr)
            options = {"n_threads": args.threads} if args.threads else {}
            handle = start_server_thread(Settings(port=0, backend=args.backend, backend_options=options))
            url, token = handle.url, handle.token
        options = {"system": args.system or None, "temperature": args.temperature, "max_tokens": args.max_tokens}
        with connect(url, token=token, transport=args.transport) as client, \
                client.stream(args.message, **options) as turn:
            return _print_stream(turn, args.transport)
    except NBChatError as exc:
        print(f"nbchat chat: {exc}", file=sys.stderr)
        return 1
    finally:
        if handle is not None:
            handle.stop()


def _print_stream(turn: TurnStream, transport: str) -> int:
    """Print the answer as it arrives; Ctrl-C interrupts the turn, and what was
    generated up to then is still printed, up to its ``[INTERRUPTED]``."""
    start = time.perf_counter()
    first: list[float] = []
    chunks = 0

    def show(chunk: Chunk) -> None:
        nonlocal chunks
        if not first:
            first.append(time.perf_counter() - start)
        chunks += 1
        print(chunk.content, end="", flush=True)

    from ..clients import collect

    end = collect(turn, show)
    total = time.perf_counter() - start
    detail = f": {end.error.message}" if end.error else ""
    ttft = f"{first[0] * 1000:.0f} ms" if first else "-"
    print(f"\n\n-- {end.status.value}{detail} | {transport} | first token {ttft} | {chunks} chunks in {total:.2f} s",
          file=sys.stderr)
    if end.ok:
        return 0
    return 130 if end.status is Status.INTERRUPTED else 1
