"""nbchat: stream a language model's answer live into Jupyter.

The import is light: the server, the clients' network libraries, the model
and the notebook layer are imported only when used.
"""

from __future__ import annotations

from .errors import (
    AuthError,
    BackendError,
    NBChatConnectionError,
    NBChatError,
    PayloadTooLarge,
    ProtocolError,
    QueueFull,
    RequestError,
    ResumeError,
    StreamTimeout,
)
from .events import Chunk, End, ErrorInfo, Event, Message, Status, TurnRequest

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "BackendError",
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
    "Status",
    "StreamTimeout",
    "TurnRequest",
    "__version__",
]
