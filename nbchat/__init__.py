"""nbchat: stream a language model's answer live into Jupyter.

The import is light: the server, the clients' network libraries, the model
and the notebook layer are imported only when used.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .wire.errors import (
    AuthError,
    BackendError,
    NBChatConnectionError,
    NBChatError,
    PayloadTooLarge,
    ProtocolError,
    QueueFull,
    RequestError,
    ResumeError,
    ServerStartError,
    StreamTimeout,
    TurnError,
)
from .wire.events import Chunk, End, ErrorInfo, Event, Message, Status, TurnRequest


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext nbchat``: registers ``%%chat`` and ``%chat`` (IPython is imported only now)."""
    from .notebook.magics import load_ipython_extension as _load

    _load(ip)


def unload_ipython_extension(ip: Any) -> None:
    from .notebook.magics import unload_ipython_extension as _unload

    _unload(ip)


def __getattr__(name: str) -> Any:
    # ChatWidget needs anywidget and ipywidgets: import them only when asked for.
    if name == "ChatWidget":
        from .notebook.widget import ChatWidget

        return ChatWidget
    raise AttributeError(f"module 'nbchat' has no attribute {name!r}")

__all__ = [
    "AuthError",
    "BackendError",
    "ChatWidget",
    "Chunk",
    "End",
    "ErrorInfo",
    "Event",
    "Message",
    "NBChatConnectionError",
    "NBChatError",
    "PayloadTooLarge",
    "ProtocolError",
    "QueueFull",
    "RequestError",
    "ResumeError",
    "ServerStartError",
    "Status",
    "StreamTimeout",
    "TurnError",
    "TurnRequest",
    "__version__",
]
