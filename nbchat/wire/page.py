"""The wire contract as the widget's page reads it: one JSON document, generated.

The page (``nbchat/notebook/js/``) must agree with the server on paths, query
parameters, frames, statuses and transport names. They are written once, in
:mod:`.contract` and :class:`.events.Status`; the front-end build runs
``python -m nbchat.wire.page`` and writes the document into the module the
bundle imports (``js/contract.js``) and into the bundle's second line, where
``tests/test_widget_bundle.py`` compares it with this function's.
"""

from __future__ import annotations

import json
from typing import Any

from .contract import (
    AFTER_PARAM,
    DEFAULT_MAX_TOKENS,
    DIRECT_TRANSPORTS,
    HEALTH_PATH,
    INTERRUPT_FRAME,
    INTERRUPT_PATH,
    LAST_EVENT_ID_PARAM,
    NDJSON_PATH,
    OPENAI_COMPLETIONS_PATH,
    RESUME_KEY,
    SSE_PATH,
    TOKEN_PARAM,
    TRANSPORT_ALIASES,
    TRANSPORTS,
    TURN_HEADER,
    TURN_PARAM,
    TURNS_PATH,
    UID_PARAM,
    WEBSOCKET_PATH,
)
from .events import Status


def page_contract() -> dict[str, Any]:
    """Every wire name the page uses, keyed as the page reads them."""
    return {
        "paths": {"health": HEALTH_PATH, "turns": TURNS_PATH, "interrupt": INTERRUPT_PATH, "sse": SSE_PATH,
                  "ndjson": NDJSON_PATH, "websocket": WEBSOCKET_PATH, "openaiCompletions": OPENAI_COMPLETIONS_PATH},
        "params": {"token": TOKEN_PARAM, "uid": UID_PARAM, "turn": TURN_PARAM, "after": AFTER_PARAM,
                   "lastEventId": LAST_EVENT_ID_PARAM},
        "turnHeader": TURN_HEADER,
        "interruptFrame": INTERRUPT_FRAME,
        "resumeKey": RESUME_KEY,
        "statuses": {status.name: status.value for status in Status},
        "transports": list(TRANSPORTS),
        "directTransports": list(DIRECT_TRANSPORTS),
        "aliases": dict(TRANSPORT_ALIASES),
        "defaults": {"maxTokens": DEFAULT_MAX_TOKENS},  # no temperature: unset, the server's backend chooses
    }


def page_contract_json() -> str:
    """The document on one line, keys sorted: the same bytes from every run."""
    return json.dumps(page_contract(), sort_keys=True, separators=(",", ":"))


if __name__ == "__main__":
    print(page_contract_json())
