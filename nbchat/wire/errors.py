"""The error tree: one root, so callers can catch everything nbchat raises.

    NBChatError
    ├── RequestError (ValueError)      the request was rejected (HTTP 4xx, or an error record)
    │   └── PayloadTooLarge            body or message over the server's limit (413, or close 1009)
    ├── AuthError (PermissionError)    missing or wrong token (401/1008), foreign origin (403)
    ├── NBChatConnectionError (ConnectionError)
    │                                  the server cannot be reached or the stream broke
    ├── ProtocolError (ValueError)     the peer sent something the wire contract does not allow
    ├── StreamTimeout (TimeoutError)   nothing arrived for too long
    ├── ResumeError                    the turn or the asked-for seq is no longer available
    ├── TurnError                      a turn ended without an answer (End.raise_for_status())
    ├── ServerStartError (RuntimeError)
    │                                  a server (in this process, or a benchmark's child) did not start
    └── BackendError                   a backend failed (turned into [ERROR] by the server)
        └── QueueFull                  the model's queue is full: try again shortly

Transport errors wrap the underlying library's with ``raise ... from`` so the
cause stays visible.
"""

from __future__ import annotations

# Error codes that say a request was rejected before anything was generated.
# Over WebSocket these arrive as an error record followed by [ERROR]; clients
# raise RequestError for them instead of reporting a finished turn.
REQUEST_ERROR_CODES: frozenset[str] = frozenset(
    {
        "invalid_json",
        "invalid_utf8",
        "invalid_request",
        "payload_too_large",
        "unknown_uid",
        "unknown_turn",
        "no_pending_turn",
        "resume_unavailable",
        "unsupported_frame",
    }
)


class NBChatError(Exception):
    """Root of every error nbchat raises."""


class RequestError(NBChatError, ValueError):
    """The server rejected the request; ``code`` says why, ``status`` is the HTTP status if any."""

    def __init__(self, message: str, *, code: str = "invalid_request", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class PayloadTooLarge(RequestError):
    """The request body or WebSocket message was over the server's ``--max-body-bytes``."""


class AuthError(NBChatError, PermissionError):
    """The token was missing or wrong, or the Origin is not allowed."""


class NBChatConnectionError(NBChatError, ConnectionError):
    """The server could not be reached, or the connection broke mid-stream."""


class ProtocolError(NBChatError, ValueError):
    """The peer sent data that breaks the wire contract."""


class StreamTimeout(NBChatError, TimeoutError):
    """Nothing arrived within the client's timeout."""


class ResumeError(NBChatError):
    """The turn to resume is unknown, expired, or no longer holds the asked-for seq."""


class TurnError(NBChatError):
    """A turn ended with a status other than ``[DONE]`` or ``[TOKENS]``.

    ``status`` is the wire string (``"[INTERRUPTED]"``, ``"[MODEL_TIMEOUT]"``,
    ...); ``code`` is the server's error code when an error record came with it."""

    def __init__(self, message: str, *, status: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ServerStartError(NBChatError, RuntimeError):
    """A server did not start; the message says why (its error, or its last output)."""


class BackendError(NBChatError):
    """A backend failed; ``code`` is the machine-readable reason sent to clients."""

    code = "backend_error"


class QueueFull(BackendError):
    """The backend's queue is full; the turn ends with [ERROR] and can be retried."""

    code = "queue_full"
