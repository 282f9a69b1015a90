"""Do long answers fall into loops? The embedded model's sampling defaults, measured.

Eight long stories, up to 400 tokens each, through ``/talkByStream`` with no
sampling option set (what a user who sets nothing gets). An answer loops when
some sequence of six words occurs five times or more in it.

    python -m nbchat.bench.loops
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from ..clients import connect
from ..wire.events import Chunk, End
from .procs import START_TIMEOUT, in_background, nbchat_server

SUBJECTS = ("a river", "a lighthouse keeper", "a lost robot", "a mountain village", "an old clock",
            "a fox in winter", "a city at night", "a sailor's last voyage")
NGRAM = 6
REPEATS = 5


def loops(text: str, n: int = NGRAM, repeats: int = REPEATS) -> bool:
    """Whether some ``n``-word sequence occurs ``repeats`` times or more in ``text``."""
    words = text.lower().split()
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and max(grams.values()) >= repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbchat.bench.loops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=400)
    args = parser.parse_args(argv)
    with in_background(nbchat_server("smollm2")) as server:
        looped = 0
        with connect(server.url, token=server.token, transport="stream", timeout=START_TIMEOUT) as client:
            for subject in SUBJECTS:
                prompt = f"Write a long story about {subject}, at least 400 words."
                with client.stream(prompt, max_tokens=args.max_tokens) as turn:
                    events = list(turn)
                end = events[-1]
                assert isinstance(end, End)
                text = "".join(e.content for e in events if isinstance(e, Chunk))
                looping = loops(text)
                looped += looping
                print(f"{'LOOPS' if looping else 'ok   '} {len(text.split()):>4} words {end.status.value}  "
                      f"{subject}", flush=True)
        print(f"{looped} of {len(SUBJECTS)} answers loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
