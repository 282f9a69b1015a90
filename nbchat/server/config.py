"""Server settings: one object, filled from the command line or by code.

The field defaults are the only copy of each default (``nbchat serve``'s options
and the connection :class:`~nbchat.server.limits.Limits` read them from here:
``Settings.max_body_bytes`` is the default itself),
and every value is checked when the object is made, so code cannot build a
server the command line would refuse.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, replace

from ..backends import BACKEND_NAMES
from ..backends.echo import DEFAULT_RATE

#: what ``store`` may start with (the redis client's URL schemes); "" keeps turns in memory
STORE_SCHEMES = ("redis://", "rediss://", "unix://")

#: fields that must be > 0 (NaN included in the refusal) and those that may also be 0
_POSITIVE = ("model_timeout", "pending_seconds", "replay_max_bytes", "max_turns", "keepalive_seconds",
             "ping_interval", "max_body_bytes", "header_timeout", "max_header_bytes", "max_connections",
             "max_queued_bytes", "stream_max_entries", "lease_seconds")
_NOT_NEGATIVE = ("rate", "grace_period", "retain_seconds", "record_max_mb", "hub_auth_cache")
#: fields where None means the mode's default
_OPTIONAL_NOT_NEGATIVE = ("max_user_turns", "user_turns_per_minute", "fair_slots")

#: what one user may hold and begin under a JupyterHub unless told otherwise: a %%chat cell, a widget and one
#: more at once; a turn every two seconds on average
HUB_MAX_USER_TURNS = 3
HUB_USER_TURNS_PER_MINUTE = 30.0


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    #: None makes a random token (printed at start); "" turns auth off
    token: str | None = None
    backend: str = "smollm2"
    #: echo backend: pieces per second; 0 = as fast as possible
    rate: float = DEFAULT_RATE
    #: model id for the openai backend (and the name reported by /v1/models)
    model: str | None = None
    #: a backend that yields nothing for this long ends the turn with [MODEL_TIMEOUT]
    model_timeout: float = 30.0
    allow_origins: tuple[str, ...] = ()
    #: how long a turn with nobody attached keeps generating so a client can reattach
    grace_period: float = 30.0
    #: how long an ended turn stays available for resume
    retain_seconds: float = 120.0
    #: a queued turn (POST /turns) that nobody starts is dropped after this long
    pending_seconds: float = 300.0
    #: memory a turn's resume buffer may hold (its records, not just their text); older chunks go first
    replay_max_bytes: int = 8 * 1024 * 1024
    #: turns kept at once (running, pending and ended)
    max_turns: int = 10_000
    #: SSE comment interval while nothing else goes out
    keepalive_seconds: float = 15.0
    #: WebSocket ping interval
    ping_interval: float = 20.0
    #: a request body or WebSocket message over this is refused (413, or close 1009)
    max_body_bytes: int = 1024 * 1024
    #: a request head (request line and headers) must be complete this many seconds after it began (else 408)
    header_timeout: float = 10.0
    #: a request head over this many bytes is refused with 431 before it is parsed further
    max_header_bytes: int = 64 * 1024
    #: connections held at once; at the limit the oldest one still sending its head makes room
    max_connections: int = 1000
    #: bytes queued for one client that does not read (a WebSocket pinging without reading pongs) before it is dropped
    max_queued_bytes: int = 1024 * 1024
    #: add a server emit timestamp ("ts") to every chunk record
    timestamps: bool = True
    #: write each turn's chunks with their server times to a JSON Lines file in this directory
    record: str | None = None
    #: the replay backend's recording (a file, or a directory of them played in turn)
    replay: str | None = None
    #: the replay backend's pace in pieces per second; None keeps the recorded pace
    replay_rate: float | None = None
    #: where turns live: "" keeps them in this process; "redis://HOST:PORT/DB" shares them between processes
    store: str = ""
    #: shared store: entries a turn's stream keeps (the oldest go first; a reader behind them gets resume_unavailable)
    stream_max_entries: int = 100_000
    #: shared store: a process's lease; a turn whose process stops renewing it ends with [ERROR] after this long
    lease_seconds: float = 3.0
    backend_options: dict[str, object] = field(default_factory=dict)
    #: serve on a non-loopback address with auth off (token ""): refused unless this says the network is trusted
    public_without_token: bool = False
    #: ``record``: the recordings' total size in MiB; past it the oldest files go (0: no bound)
    record_max_mb: float = 256.0
    #: serve as a JupyterHub service: under its prefix, to Hub users (the ``JUPYTERHUB_*`` environment), no token
    jupyterhub: bool = False
    #: under a JupyterHub: turns one user may hold at once, running or queued (None: HUB_MAX_USER_TURNS; 0: no bound)
    max_user_turns: int | None = None
    #: under a JupyterHub: turns one user may begin per minute (None: HUB_USER_TURNS_PER_MINUTE; 0: no bound)
    user_turns_per_minute: float | None = None
    #: under a JupyterHub: turns generating at once, the others queued and served user by user in turn
    #: (None: 1 for the embedded model, which generates one at a time anyway, else 0; 0: no fair queue)
    fair_slots: int | None = None
    #: under a JupyterHub: seconds the Hub's answer for a token is kept, so a revoked token works that long
    hub_auth_cache: int = 300

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            _check(name, getattr(self, name), zero_ok=False)
        for name in _NOT_NEGATIVE:
            _check(name, getattr(self, name), zero_ok=True)
        for name in _OPTIONAL_NOT_NEGATIVE:
            if getattr(self, name) is not None:
                _check(name, getattr(self, name), zero_ok=True, hint=" (or None: the mode's default)")
        if self.replay_rate is not None:
            _check("replay_rate", self.replay_rate, zero_ok=True, hint=" (or None: the recorded pace)")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"Settings.port must be an int from 0 to 65535 (0 picks a free one), not {self.port!r}")
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"Settings.backend must be one of {', '.join(BACKEND_NAMES)}, not {self.backend!r}")
        if (self.backend == "replay") != (self.replay is not None):
            raise ValueError("Settings.replay, the recording to play (--replay FILE), goes with backend='replay' "
                             "and only with it")
        if self.store and not self.store.startswith(STORE_SCHEMES):
            raise ValueError(f"Settings.store takes a Redis URL ({', '.join(STORE_SCHEMES)}...) or \"\" (in memory), "
                             f"not {self.store!r}")

    def user_limits(self) -> tuple[int, float, int]:
        """Turns per user at once, turns per user per minute, fair-queue slots (each 0: none), for this mode."""
        if not self.jupyterhub:
            return 0, 0.0, 0
        slots = self.fair_slots if self.fair_slots is not None else int(self.backend == "smollm2")
        return (HUB_MAX_USER_TURNS if self.max_user_turns is None else self.max_user_turns,
                HUB_USER_TURNS_PER_MINUTE if self.user_turns_per_minute is None else self.user_turns_per_minute,
                slots)

    def with_token(self) -> Settings:
        """A copy whose token is concrete: a random one when none was given (none under a JupyterHub)."""
        if self.jupyterhub and self.token:
            raise ValueError("Settings.token goes unused under a JupyterHub (jupyterhub=True): the Hub "
                             "authenticates every request")
        if self.jupyterhub:
            return replace(self, token="")
        if self.token is None:
            return replace(self, token=secrets.token_hex(24))  # hex: never read as an option, as Jupyter does
        return self


def _check(name: str, value: object, *, zero_ok: bool, hint: str = "") -> None:
    """Raise ValueError naming ``Settings.<name>`` unless ``value`` is a number > 0 (>= 0 with ``zero_ok``)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)
            or value < 0 or (value == 0 and not zero_ok)):
        raise ValueError(f"Settings.{name} must be a number {'>= 0' if zero_ok else '> 0'}{hint}, not {value!r}")
