"""The shared turn store (``nbchat serve --store redis://…``): :mod:`.schema` (keys and entries),
:mod:`.scripts` (Lua), :mod:`.client` (connections), :mod:`.writer` (events to Redis),
:mod:`.reader` (a stream of a turn generating elsewhere), :mod:`.heartbeat`, :mod:`.store`."""

from .store import RedisStore

__all__ = ["RedisStore"]
