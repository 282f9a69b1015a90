"""``--record`` against a real server: the directory stays under its bound with the oldest
recordings removed first, a chunk costs a few bytes beside its text, and a recording that is not
one is refused at load with its file and line (never mid-replay)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nbchat.backends.replay import ReplayBackend, load_recording
from nbchat.server.config import Settings
from nbchat.server.serving import start_server_thread
from nbchat.wire.errors import ServerStartError
from tests.helpers import TOKEN, ServerFactory

H = {"token": TOKEN}
ROOT = Path(__file__).resolve().parent.parent
HEADER = json.dumps({"type": "turn", "format": "nbchat-recording/2", "id": "t", "request": {}, "provenance": {}})


def ask(server_url: str, content: str) -> None:
    r = httpx.post(server_url + "/talkByStream", json={"userMessage": {"role": "user", "content": content}},
                   headers=H, timeout=30)
    assert r.text.rstrip().endswith('{"status":"[DONE]"}')


def test_the_record_directory_stays_under_its_bound_oldest_first(make_server: ServerFactory, tmp_path: Path) -> None:
    cap_mb = 0.1
    server = make_server(record=str(tmp_path), record_max_mb=cap_mb)
    turns = 30  # about 8 KB a recording: some twelve fit under the bound
    for i in range(turns):
        ask(server.url, f"turn {i:03d} " + "x" * 2000)
    server.stop()
    files = sorted(tmp_path.glob("*.jsonl"))
    total = sum(f.stat().st_size for f in files)
    assert 0 < total <= cap_mb * 1024 * 1024, total
    assert len(files) < turns
    kept = sorted(load_recording(f).text[:8] for f in files)
    assert kept[-1] == f"turn {turns - 1:03d}" and kept[0] != "turn 000"  # the newest stayed, the oldest went
    assert [f"turn {i:03d}" for i in range(turns - len(files), turns)] == kept


def test_a_chunk_costs_a_few_bytes_beside_its_text(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server(record=str(tmp_path))
    content = "y" * 2000  # 500 pieces of 4 characters
    ask(server.url, content)
    path = next(tmp_path.glob("*.jsonl"))
    lines = path.read_text(encoding="utf-8").splitlines()
    chunks = lines[1:-1]
    assert len(chunks) == 500
    overhead = sum(len(line) + 1 for line in chunks) - len(content)
    assert overhead / len(chunks) <= 16, overhead / len(chunks)  # the first format took about 70
    assert path.stat().st_size < 6 * len(content)
    recording = load_recording(path)
    assert recording.text == content and all(g >= 0 for g in recording.gaps)


def test_a_recording_of_the_first_format_still_replays(make_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    lines = [{"type": "turn", "format": "nbchat-recording/1", "id": "o", "request": {}, "provenance": {}},
             {"type": "chunk", "seq": 1, "t": 0.0, "ts": 1.0, "content": "old "},
             {"type": "chunk", "seq": 2, "t": 0.01, "ts": 1.01, "content": "format"},
             {"type": "end", "t": 0.02, "status": "[DONE]", "error": None, "chunks": 2}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    server = make_server(ReplayBackend(path))
    r = httpx.post(server.url + "/talkByStream", json={"userMessage": {"role": "user", "content": "?"}}, headers=H)
    assert "".join(json.loads(line).get("content", "") for line in r.text.splitlines()) == "old format"


BAD = {
    "error-not-an-object": (HEADER + "\n[0.1, \"a\"]\n"
                            + json.dumps({"type": "end", "t": 0.2, "status": "[ERROR]", "error": "boom", "chunks": 1})
                            + "\n").encode(),
    "not-utf8": (HEADER + "\n[0.1, \"a\"]\n").encode() + b"[0.2, \"\xff\xfe\"]\n",
    "very-deep": (HEADER + "\n").encode() + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "bad-status": (HEADER + "\n" + json.dumps({"type": "end", "t": 0, "status": "[FINE]", "chunks": 0})).encode(),
    "negative-time": (HEADER + "\n[-1, \"a\"]\n").encode(),
}
BAD_LINE = {"error-not-an-object": 3, "not-utf8": 3, "very-deep": 2, "bad-status": 2, "negative-time": 2}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_recording_is_refused_at_start_with_its_file_and_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(BAD[name])
    with pytest.raises(ServerStartError, match=rf"{name}\.jsonl: line {BAD_LINE[name]}: "):
        start_server_thread(Settings(port=0, token=TOKEN, backend="replay", replay=str(path))).stop()


def test_the_command_line_names_the_bad_file_and_line_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(BAD["error-not-an-object"])
    proc = subprocess.run([sys.executable, "-m", "nbchat", "serve", "--backend", "replay", "--replay", str(path),
                           "--port", "0"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"{path}: line 3:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
