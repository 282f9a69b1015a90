"""The streaming chat server: the ASGI app, its transports, turns, auth and settings."""

from __future__ import annotations

from .app import create_app
from .config import Settings
from .serving import ServerHandle, make_server, start_server_thread

__all__ = ["ServerHandle", "Settings", "create_app", "make_server", "start_server_thread"]
