"""Stop sequences, applied to any backend's pieces as they come.

A turn asked to stop at some strings (OpenAI's ``stop``) ends before the first
of them, and none of it is sent. A stop sequence can arrive split over several
pieces, so text that could be the start of one is held back until the next
piece says whether it is; held text goes out as soon as it cannot be. Doing
this on the server, not in each backend, holds it for the embedded model, an
upstream, echo and replay alike.
"""

from __future__ import annotations


class StopScanner:
    """Feed pieces in order; each feed returns the text safe to send and whether a stop was reached."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        text = self._held + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self._held = ""
            return text[:min(found)], True
        keep = self._partial(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """What is still held when the answer ends without a stop: it was never the start of one."""
        held, self._held = self._held, ""
        return held

    def _partial(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins some stop sequence."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest
