"""A soak of a real ``nbchat serve`` (echo backend): mixed transports, aborts and resumes, for minutes.

    PYTHONPATH=$PWD python tests/soak.py [--minutes 10] [--clients 50] [--rate 200]

Each client asks turn after turn, cycling NDJSON, SSE, the OpenAI stream and a WebSocket. One
turn in ten is abandoned after its first chunk; half of those are then resumed from the last seq
seen (NDJSON ``after``, SSE ``lastEventId``, a WebSocket ``resume``) and must end with the rest
of the answer and ``[DONE]``. Every 30 s the server's RSS and open descriptors are printed; at
the end, the counts of HTTP statuses and turn endings, the wrong ones (an answer that is not the
echo of the question, a status other than the one expected, a 5xx) and the tracebacks in the
server's log.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect as ws_connect

from tests.load_limits import serve

TOKEN = "soak-token-0123456789"
H = {"token": TOKEN}
TRANSPORTS = ("ndjson", "sse", "openai", "ws")


class Tally:
    def __init__(self) -> None:
        self.http: collections.Counter[int] = collections.Counter()
        self.ends: collections.Counter[str] = collections.Counter()
        self.wrong: list[str] = []
        self.turns = self.aborted = self.resumed = 0

    def end(self, transport: str, status: str, text: str, want: str, expected: str = "[DONE]") -> None:
        self.turns += 1
        self.ends[f"{transport} {status}"] += 1
        if status != expected or (expected == "[DONE]" and text != want):
            self.wrong.append(f"{transport}: {status} {text[:40]!r} != {want[:40]!r}")


def records(line: str) -> dict[str, object]:
    obj = json.loads(line)
    assert isinstance(obj, dict)
    return obj


async def http_turn(client: httpx.AsyncClient, tally: Tally, transport: str, want: str, abort: bool,
                    resume: bool) -> None:
    body = {"userMessage": {"role": "user", "content": want}}
    path = {"ndjson": "/talkByStream", "sse": "/createSse", "openai": "/v1/chat/completions"}[transport]
    if transport == "openai":
        body = {"model": "m", "stream": True, "messages": [body["userMessage"]]}
    text, status, seq, turn = "", "", 0, ""
    async with client.stream("POST", path, json=body, headers=H) as r:
        tally.http[r.status_code] += 1
        if r.status_code != 200:
            tally.wrong.append(f"{transport}: HTTP {r.status_code}")
            return
        turn = r.headers["x-nbchat-turn"]
        async for line in r.aiter_lines():
            piece, status, seq = read_line(transport, line, status, seq)
            text += piece
            if abort and text:
                break
    if not abort:
        tally.end(transport, status, text, want)
        return
    tally.aborted += 1
    if resume and transport != "openai":
        await resume_http(client, tally, transport, turn, seq, text, want)


def read_line(transport: str, line: str, status: str, seq: int) -> tuple[str, str, int]:
    if transport == "ndjson":
        rec = records(line) if line else {}
        if "status" in rec:
            return "", str(rec["status"]), seq
        return str(rec.get("content", "")), status, int(rec.get("seq", seq))  # type: ignore[call-overload]
    if not line.startswith("data: "):
        return "", status, seq
    data = line[6:]
    if transport == "sse":
        if not data.startswith("{"):
            return "", data, seq
        rec = records(data)
        return str(rec.get("content", "")), status, int(rec.get("seq", seq))  # type: ignore[call-overload]
    if data == "[DONE]":
        return "", status or "[DONE]", seq
    obj = records(data)
    if "error" in obj:
        return "", "[ERROR]", seq
    choice = (obj.get("choices") or [{}])[0]  # type: ignore[index]
    return (choice.get("delta", {}).get("content") or ""), status, seq


async def resume_http(client: httpx.AsyncClient, tally: Tally, transport: str, turn: str, seq: int, text: str,
                      want: str) -> None:
    tally.resumed += 1
    path, key = ("/talkByStream", "after") if transport == "ndjson" else ("/createSse", "lastEventId")
    status = ""
    async with client.stream("GET", path, params={"turn": turn, key: str(seq)}, headers=H) as r:
        tally.http[r.status_code] += 1
        async for line in r.aiter_lines():
            piece, status, seq = read_line(transport, line, status, seq)
            text += piece
    tally.end(transport + "-resume", status, text, want)


class Socket:
    """A client's WebSocket for one uid; an abandoned turn drops it and the next turn opens another."""

    def __init__(self, url: str, uid: str) -> None:
        self.url = url.replace("http://", "ws://") + f"/websocket/{uid}?token={TOKEN}"
        self.conn: object | None = None

    async def get(self) -> object:
        if self.conn is None:
            self.conn = await ws_connect(self.url, max_size=None)
        return self.conn

    async def drop(self) -> None:
        if self.conn is not None:
            await self.conn.close()  # type: ignore[attr-defined]
            self.conn = None


async def ws_frames(conn: object, text: str, seq: int, until_first: bool) -> tuple[str, str, int]:
    """Read a turn's frames: (text so far, status or "" when left after the first chunk, last seq)."""
    while True:
        frame = await conn.recv()  # type: ignore[attr-defined]
        if not frame.startswith("{"):
            return text, frame, seq
        rec = records(frame)
        text += str(rec.get("content", ""))
        seq = int(rec.get("seq", seq))  # type: ignore[call-overload]
        if until_first:
            return text, "", seq


async def ws_turn(sock: Socket, tally: Tally, want: str, abort: bool, resume: bool) -> None:
    conn = await sock.get()
    await conn.send(json.dumps({"userMessage": {"role": "user", "content": want}}))  # type: ignore[attr-defined]
    text, status, seq = await ws_frames(conn, "", 0, abort)
    if not abort or status:
        tally.end("ws", status, text, want)
        return
    tally.aborted += 1
    await sock.drop()  # the connection is lost mid-answer
    if resume:
        tally.resumed += 1
        conn = await sock.get()  # a new socket for the same uid: its turn, from the last seq seen
        await conn.send(json.dumps({"resume": {"after": seq}}))  # type: ignore[attr-defined]
        text, status, seq = await ws_frames(conn, text, seq, False)
        tally.end("ws-resume", status, text, want)


async def client_loop(url: str, tally: Tally, stop: float, rng: random.Random) -> None:
    sock = Socket(url, f"soak{rng.randrange(10**9)}")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        i = 0
        while time.monotonic() < stop:
            transport = TRANSPORTS[i % len(TRANSPORTS)]
            want = f"soak turn {i} " + "z" * rng.randrange(8, 80)
            abort = rng.random() < 0.1
            resume = abort and rng.random() < 0.5
            try:
                if transport == "ws":
                    await ws_turn(sock, tally, want, abort, resume)
                else:
                    await http_turn(client, tally, transport, want, abort, resume)
            except (httpx.HTTPError, OSError, ValueError) as exc:
                tally.wrong.append(f"{transport}: {type(exc).__name__} {exc}")
            i += 1
    await sock.drop()


def proc_figures(pid: int) -> tuple[float, int]:
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def soak(url: str, pid: int, minutes: float, clients: int) -> Tally:
    tally = Tally()
    start = time.monotonic()
    stop = start + minutes * 60
    rng = random.Random(20)
    tasks = [asyncio.ensure_future(client_loop(url, tally, stop, random.Random(rng.random())))
             for _ in range(clients)]
    while time.monotonic() < stop:
        await asyncio.sleep(30)
        rss, fds = proc_figures(pid)
        print(f"{time.monotonic() - start:5.0f} s  turns {tally.turns:6d}  RSS {rss:6.1f} MiB  fds {fds:4d}  "
              f"wrong {len(tally.wrong)}", flush=True)
    await asyncio.gather(*tasks)
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="echo pieces per second")
    args = parser.parse_args()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "nbchat-soak.log"
    with log.open("w") as err, serve(rate=args.rate, token=TOKEN, log=err) as server:
        tally = asyncio.run(soak(server.url, server.proc.pid, args.minutes, args.clients))
        time.sleep(5)  # the last turns' retention timers and sockets settle
        rss, fds = proc_figures(server.proc.pid)
    text = log.read_text()
    print(f"turns {tally.turns}, aborted {tally.aborted}, resumed {tally.resumed}")
    print(f"HTTP statuses {dict(sorted(tally.http.items()))}")
    print(f"endings {dict(sorted(tally.ends.items()))}")
    print(f"after: RSS {rss:.1f} MiB, fds {fds}; wrong {len(tally.wrong)}; 5xx "
          f"{sum(n for code, n in tally.http.items() if code >= 500)}; tracebacks {text.count('Traceback')}")
    for line in tally.wrong[:10]:
        print("  wrong:", line)
    return 0 if not tally.wrong and "Traceback" not in text else 1


if __name__ == "__main__":
    sys.exit(main())
