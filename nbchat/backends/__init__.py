"""Backends: where the answer's pieces come from.

Heavy backends (the embedded model, the upstream client) are imported only by
:func:`create_backend`, so ``import nbchat`` stays light.
"""

from __future__ import annotations

from typing import Any

from .base import LENGTH, Backend, Finish, GenerationRequest
from .echo import DEFAULT_RATE

BACKEND_NAMES = ("smollm2", "echo", "openai", "replay")


def create_backend(name: str, **options: Any) -> Backend:
    """Make a backend by its command-line name.

    Options: ``rate`` (echo); ``model``, ``base_url``, ``api_key`` (openai);
    ``model_path``, ``n_threads`` (smollm2); ``replay`` (a recording file or directory) and
    ``replay_rate`` (replay).
    """
    if name == "echo":
        from .echo import EchoBackend

        return EchoBackend(rate=float(options.get("rate", DEFAULT_RATE)))
    if name == "smollm2":
        from .smollm2 import SmolLM2Backend

        known = ("model_path", "n_threads", "cache_mb", "exact", "n_ctx")
        return SmolLM2Backend(**{k: v for k, v in options.items() if k in known})
    if name == "openai":
        from .upstream import OpenAIUpstreamBackend

        return OpenAIUpstreamBackend(**{k: v for k, v in options.items() if k in ("model", "base_url", "api_key")})
    if name == "replay":
        from .replay import ReplayBackend

        if not options.get("replay"):
            raise ValueError("the replay backend needs a recording: --replay FILE (made by --record DIR)")
        return ReplayBackend(options["replay"], rate=options.get("replay_rate"))
    raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")


__all__ = ["BACKEND_NAMES", "LENGTH", "Backend", "Finish", "GenerationRequest", "create_backend"]
