"""Where an answer came from: the record each ``%%chat`` output keeps in
``metadata["nbchat"]`` and each ``ChatWidget`` answer keeps beside its text.

The record is plain JSON (it is saved in the notebook file) and never holds a
secret: the server URL loses any user-info and query (``?token=...``) and the
token itself is never read into it. :func:`server_info` asks the server's open
``/health`` route which backend and model answer, once per URL.
"""

from __future__ import annotations

import datetime
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .options import trimmed_note

if TYPE_CHECKING:
    from .options import ChatOptions
    from .render import TurnStats

#: the keys of a provenance record, in the order they are written
FIELDS = ("model", "backend", "server", "transport", "temperature", "max_tokens", "sampling", "system", "turn_id",
          "uid", "first_token_s", "tokens_per_s", "chunks", "status", "history_trimmed", "timestamp")


def public_url(url: str) -> str:
    """``url`` without user-info, query or fragment: what may be written down."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def provenance(options: ChatOptions, stats: TurnStats, *, server: str, info: dict[str, Any], turn_id: str | None,
               uid: str | None, timestamp: str) -> dict[str, Any]:
    """The record of one answer; ``info`` is the server's ``/health`` (backend, model), possibly empty.

    ``turn_id`` is the server's id of the turn where the transport reports it
    (SSE, NDJSON and OpenAI do, in a header; the WebSocket contract does not),
    ``uid`` the client's id that the server files its turns under (and that a
    ``--record`` file carries), so an answer can be matched to its recording.
    """
    # What the model sampled with: the backend's defaults (from /health), overridden by what was set.
    given = info.get("sampling")
    sampling = dict(given) if isinstance(given, dict) else {}
    if options.temperature is not None:
        sampling["temperature"] = options.temperature
    return {
        "model": info.get("model") or options.model,
        "backend": info.get("backend"),
        "server": public_url(server),
        "transport": options.transport,
        "temperature": sampling.get("temperature"),
        "max_tokens": options.max_tokens,
        "sampling": sampling,
        "system": options.system,
        "turn_id": turn_id,
        "uid": uid,
        "first_token_s": _rounded(stats.time_to_first_token, 3),
        "tokens_per_s": _rounded(stats.tokens_per_second, 2),
        "chunks": stats.chunks,
        "status": stats.status,
        "history_trimmed": stats.trimmed,
        "timestamp": timestamp,
    }


def describe(record: dict[str, Any]) -> str:
    """One line for ``%chat history`` and the Markdown export."""
    parts = [str(record.get("model") or "?")]
    if record.get("backend"):
        parts[0] += f" ({record['backend']})"
    parts += [f"{record.get('transport')} to {record.get('server')}", f"temperature {record.get('temperature')}",
              f"max tokens {record.get('max_tokens')}"]
    if record.get("first_token_s") is not None:
        parts.append(f"first token {record['first_token_s']} s")
    parts.append(f"{record.get('chunks')} chunks")
    if record.get("tokens_per_s") is not None:
        parts.append(f"{record['tokens_per_s']} tok/s")
    parts.append(str(record.get("status")))
    if record.get("history_trimmed"):
        parts.append(trimmed_note(record["history_trimmed"]))
    if record.get("turn_id"):
        parts.append(f"turn {record['turn_id']}")
    parts.append(str(record.get("timestamp")))
    return " · ".join(parts)


class ServerInfo:
    """The backend and model behind each server URL, asked once (``GET /health`` needs no token)."""

    def __init__(self) -> None:
        self._known: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # the widget asks from a worker thread

    def get(self, url: str, timeout: float = 5.0) -> dict[str, Any]:
        with self._lock:
            if url in self._known:
                return self._known[url]
        import httpx

        try:
            body = httpx.get(f"{public_url(url)}/health", timeout=timeout).json()
        except (httpx.HTTPError, ValueError):
            return {}  # provenance without a model name beats no answer: ask again next turn
        info = ({"backend": body.get("backend"), "model": body.get("model"), "sampling": body.get("sampling")}
                if isinstance(body, dict) else {})
        with self._lock:
            self._known[url] = info
        return info
