"""How the clients report failures: HTTP answers, refused connections, broken
and stalled streams, each mapped onto :mod:`nbchat.wire.errors` with a message
that says what to do next."""

from __future__ import annotations

from ..wire.errors import (
    AuthError,
    NBChatConnectionError,
    NBChatError,
    PayloadTooLarge,
    RequestError,
    ResumeError,
    StreamTimeout,
)
from ..wire.openai import parse_error_body

# Error codes that mean "this turn (or this seq) cannot be resumed".
RESUME_CODES = frozenset({"resume_unavailable", "unknown_turn"})


def cannot_connect(url: str, exc: BaseException) -> NBChatConnectionError:
    return NBChatConnectionError(
        f"cannot connect to {url} ({exc or type(exc).__name__}): is the server running at {url}? "
        "Start one with `nbchat serve` and pass the URL it prints."
    )


def broken(url: str, exc: BaseException | str) -> NBChatConnectionError:
    return NBChatConnectionError(
        f"the connection to {url} broke mid-stream ({exc or type(exc).__name__}); "
        "reattach with client.resume(after=turn.last_seq, turn_id=turn.turn_id)"
    )


def timed_out(url: str, timeout: float | None) -> StreamTimeout:
    return StreamTimeout(
        f"nothing arrived from {url} for {timeout} s: the model may be slow or stuck; "
        "pass a larger timeout= to connect() or check the server's log"
    )


def error_from_status(status: int, body: bytes, url: str, *, resuming: bool = False) -> NBChatError:
    """The nbchat error for a non-2xx HTTP answer (or a refused WebSocket handshake)."""
    fields = parse_error_body(body)
    code, message = fields.code, fields.message
    if status in (401, 403):
        hint = ("check the token printed by `nbchat serve` (connect(url, token=...))" if status == 401
                else "the server does not allow this Origin (see `nbchat serve --allow-origin`)")
        # nbchat's own refusals already say where the token comes from (a Hub service's: which credentials)
        explained = "nbchat serve" in message or "Hub" in message
        return AuthError(f"{url} answered {status}: {message}" + ("" if explained else f"; {hint}"))
    if status == 413:
        # the server's own message quotes its configured limit
        return PayloadTooLarge(f"{message or 'the request is over the server limit'} ({status}): send less",
                               code=code or "payload_too_large", status=status)
    if resuming and (status in (404, 410) or code in RESUME_CODES):
        return ResumeError(f"cannot resume ({status}): {message}; start a new turn instead")
    if 400 <= status < 500:
        return RequestError(f"{url} rejected the request ({status}): {message}",
                            code=code or "invalid_request", status=status)
    if status in (502, 503, 504):
        return NBChatConnectionError(f"{url} is unavailable ({status}): {message}; is the server running?")
    return NBChatError(f"{url} answered {status}: {message}; see the server's log")
