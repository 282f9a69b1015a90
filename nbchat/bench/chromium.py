"""Debian's Chromium as the page benchmarks and the browser tests launch it: the system's binary,
never a browser Playwright downloads, with nothing that reaches out on its own."""

from __future__ import annotations

from typing import Any

CHROMIUM = "/usr/bin/chromium"
#: no sandbox (CI runs as root in a container), no GPU, no QUIC, and no background traffic of its own
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


def launch(playwright: Any) -> Any:
    """A headless Chromium from ``playwright`` (a started ``sync_playwright()``; untyped here)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True)
