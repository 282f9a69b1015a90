"""The model process's messages, and a GGUF file a user names: ``nbchat serve --gguf PATH``
and ``NBCHAT_GGUF``."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nbchat.backends import create_backend
from nbchat.backends import model_messages as msg
from nbchat.backends.smollm2 import ENV_GGUF, MODEL_ID, SmolLM2Backend, find_gguf
from nbchat.bench.procs import SERVING_LINE
from nbchat.clients import connect
from nbchat.wire.events import Chunk, End, Message, Status, TurnRequest
from tests.helpers import TOKEN, model_processes, stop_process

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ROOT / "nbchat" / "backends"


@pytest.mark.parametrize("command", [
    msg.Generate(3, [{"role": "user", "content": "héllo \"x\"\n"}], 12, {"temperature": 0.0, "top_p": 0.9}),
    msg.Generate(4, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]),
    msg.Stop(7),
])
def test_a_command_decodes_to_what_was_encoded(command: msg.Command) -> None:
    line = msg.encode(command)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert msg.decode_command(line) == command


@pytest.mark.parametrize("reply", [
    msg.Ready(msg.ModelInfo(version="0.3", system_info="AVX2 = 1", threads=1, n_ctx=4096, model="/m.gguf", pid=12)),
    msg.Fatal("ValueError: not a GGUF"), msg.HistoryTrimmed(1, 2), msg.Piece(1, "Paris 🚀\n", 5), msg.Length(1),
    msg.Failure(1, "too long", "context_length_exceeded"), msg.Failure(2, "the model failed"),
    msg.End(1, 9, 30, 8), msg.End(2, 9), msg.End(3, 9, 30, 8, 0), msg.End(4, 9, 30, 8, 1),
])
def test_a_reply_decodes_to_what_was_encoded(reply: msg.Reply) -> None:
    assert msg.decode_reply(msg.encode(reply)) == reply


@pytest.mark.parametrize("line", [b"[1]\n", b"{}\n", b'{"op": "dance", "id": 1}\n', b'{"op": "stop"}\n', b"nope\n"])
def test_a_line_that_is_no_command_is_a_value_error(line: bytes) -> None:
    with pytest.raises(ValueError):
        msg.decode_command(line)


@pytest.mark.parametrize("line", [b"[1]\n", b"{}\n", b'{"id": 1}\n', b'{"piece": "x"}\n', b"{"])
def test_a_line_that_is_no_reply_is_a_value_error(line: bytes) -> None:
    with pytest.raises(ValueError):
        msg.decode_reply(line)


def test_the_worker_imports_no_heavy_library_before_it_loads_the_model() -> None:
    code = ("import sys, json, nbchat.backends.llama_worker\n"
            "print(json.dumps([m for m in ('llama_cpp', 'numpy', 'starlette', 'httpx') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("module", ["llama_worker.py", "llama_model.py", "model_process.py", "worker_process.py"])
def test_the_supervisor_and_the_worker_name_no_message_key_themselves(module: str) -> None:
    keys = {value for name, value in vars(msg).items()
            if name.isupper() and isinstance(value, str)}
    used = {c.value for c in _key_positions(ast.parse((BACKENDS / module).read_text()))
            if isinstance(c, ast.Constant)}
    assert sorted(used & keys) == [], f"{module} writes message keys as strings"


def _key_positions(tree: ast.AST) -> list[ast.expr]:
    """Expressions in the place of a key: dict keys, subscripts, ``.get()``'s key, ``in``'s left side."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            found += [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Subscript):
            found.append(node.slice)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            found += node.args[:1]
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            found.append(node.left)
    return found


@pytest.mark.parametrize(("environ", "args", "said"), [
    ({}, ["--gguf", "{missing}"], "--gguf: {missing} does not exist"),
    ({}, ["--gguf", "{directory}"], "--gguf: {directory} is a directory"),
    ({}, ["--gguf", "{text}"], "--gguf: {text} is not a GGUF file"),
    ({ENV_GGUF: "{missing}"}, [], f"{ENV_GGUF}: {{missing}} does not exist"),
    ({}, ["--backend", "echo", "--gguf", "{text}"], "--gguf runs a model file on the smollm2 backend"),
])
def test_a_named_model_file_that_cannot_be_used_is_a_clear_error_at_start(
        tmp_path: Path, environ: dict[str, str], args: list[str], said: str) -> None:
    (tmp_path / "notes.gguf").write_text("not a model\n")
    paths = {"missing": str(tmp_path / "missing.gguf"), "directory": str(tmp_path),
             "text": str(tmp_path / "notes.gguf")}
    env = {**os.environ, **{k: v.format(**paths) for k, v in environ.items()}}
    command = [sys.executable, "-m", "nbchat", "serve", "--port", "0", *(a.format(**paths) for a in args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"nbchat serve: {said.format(**paths)}"), done.stderr
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_the_named_file_gives_the_backend_its_model_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_GGUF, raising=False)
    assert SmolLM2Backend().model_name == MODEL_ID and SmolLM2Backend().name == "smollm2"
    monkeypatch.setenv(ENV_GGUF, str(tmp_path / "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"))
    backend = create_backend("smollm2")
    assert backend.model_name == "Qwen2.5-0.5B-Instruct-Q4_K_M"
    assert isinstance(backend, SmolLM2Backend) and backend.gguf_path() == tmp_path / "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"
    assert backend.name == "gguf"  # /health and the provenance do not call a user's file smollm2
    named = create_backend("smollm2", model_path=str(tmp_path / "other.gguf"))  # --gguf wins over the variable
    assert named.model_name == "other" and named.name == "gguf"


@pytest.mark.model
def test_nbchat_serve_runs_a_named_gguf_in_its_supervised_process(tmp_path: Path) -> None:
    model = tmp_path / "my-local-model.gguf"
    shutil.copyfile(find_gguf(), model)
    recordings = tmp_path / "recordings"
    proc = subprocess.Popen([sys.executable, "-m", "nbchat", "serve", "--port", "0", "--token", TOKEN, "--gguf",
                             str(model), "--record", str(recordings), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the model is loaded
        found = SERVING_LINE.search(line.encode())
        assert found is not None, line
        url = found.group(1).decode()
        workers = model_processes(proc.pid)
        assert len(workers) == 1
        assert str(model) in Path(f"/proc/{workers[0]}/cmdline").read_bytes().decode(errors="replace")
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert (health["backend"], health["model"]) == ("gguf", "my-local-model")
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["my-local-model"]
        request = TurnRequest(user_message=Message("user", "What is the capital of France? Answer in one sentence."),
                              temperature=0.0, max_tokens=32)
        with connect(url, token=TOKEN, transport="stream", timeout=120) as client:
            events = list(client.stream(request))
        chunks = [e.content for e in events if isinstance(e, Chunk)]
        assert len(chunks) > 1 and "Paris" in "".join(chunks)
        assert isinstance(events[-1], End) and events[-1].status in (Status.DONE, Status.TOKENS)
        header = json.loads(next(recordings.glob("*.jsonl")).read_text().splitlines()[0])
        assert header["provenance"]["model"] == "my-local-model"
    finally:
        stop_process(proc)
