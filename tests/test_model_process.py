"""The embedded model in its own process: a model process that dies mid-turn (SIGKILL, or
a native fault: SIGILL, SIGSEGV) ends that turn with a clear [ERROR] on every transport,
while the server, and a notebook kernel, keep running and the next turn starts a fresh
model; a stop during prompt processing halts the computation; the library that is
loaded carries nothing that faults on this CPU."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nbchat.backends.cpu import check_library, read_cpu
from nbchat.backends.gguf import GGUFBackend
from nbchat.backends.smollm2 import SmolLM2Backend
from nbchat.clients import TRANSPORTS, connect
from nbchat.server.config import Settings
from nbchat.server.context import context_of
from nbchat.server.serving import ServerHandle, start_server_thread
from nbchat.wire.events import Chunk, End, Message, Status, TurnRequest
from tests.helpers import TOKEN, model_processes, quiet_after, tree_cpu_seconds

STORY = TurnRequest(user_message=Message("user", "Count from 1 to 500, separated by commas."), temperature=0.0,
                    max_tokens=400)
SHORT = TurnRequest(user_message=Message("user", "Name three colours of the rainbow."), temperature=0.0,
                    max_tokens=16)
SIGNALS = {"SIGKILL": "SIGKILL", "SIGILL": "illegal instruction", "SIGSEGV": "segmentation fault"}

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model_server() -> Iterator[ServerHandle]:
    handle = start_server_thread(Settings(port=0, token=TOKEN, backend="smollm2"))
    yield handle
    handle.stop()


def the_model_process(server: ServerHandle) -> int:
    """The model process ``server``'s backend runs on, once it is up: one of this test process's own.

    Other tests of the session may have left model processes for other models or settings (one per
    model key, shared by the backends that ask for it), so the process is the backend's, not the only one.
    """
    backend = context_of(server.app).backend
    assert isinstance(backend, GGUFBackend), backend
    deadline = time.monotonic() + 30
    while (pid := backend.model.pid) is None:
        assert time.monotonic() < deadline, "no model process started"
        time.sleep(0.05)
    assert pid in model_processes(os.getpid())
    return pid


def answer(url: str, transport: str, request: TurnRequest) -> tuple[str, End]:
    with connect(url, token=TOKEN, transport=transport, timeout=60) as client:
        events = list(client.stream(request))
    end = events[-1]
    assert isinstance(end, End)
    return "".join(e.content for e in events if isinstance(e, Chunk)), end


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("signame", ["SIGKILL", "SIGILL"])
def test_a_model_process_killed_mid_turn_ends_the_turn_and_the_next_one_works(
        model_server: ServerHandle, transport: str, signame: str) -> None:
    before, _ = answer(model_server.url, transport, SHORT)
    victim = the_model_process(model_server)
    with connect(model_server.url, token=TOKEN, transport=transport, timeout=60) as client:
        events = iter(client.stream(STORY))
        received = [next(events) for _ in range(5)]
        assert all(isinstance(e, Chunk) for e in received)
        os.kill(victim, signal.Signals[signame])
        rest = list(events)
    end = rest[-1]
    assert isinstance(end, End) and end.status is Status.ERROR, end
    assert end.error is not None
    assert "model process died" in end.error.message and SIGNALS[signame] in end.error.message
    health = httpx.get(f"{model_server.url}/health", headers={"token": TOKEN}, timeout=10)
    assert health.status_code == 200
    after, after_end = answer(model_server.url, transport, SHORT)
    assert after_end.status in (Status.DONE, Status.TOKENS)
    assert after == before  # a fresh model process gives the same greedy answer
    assert the_model_process(model_server) != victim


def test_a_segmentation_fault_is_named(model_server: ServerHandle) -> None:
    answer(model_server.url, "ws", SHORT)
    victim = the_model_process(model_server)
    with connect(model_server.url, token=TOKEN, transport="ws", timeout=60) as client:
        events = iter(client.stream(STORY))
        next(events)
        os.kill(victim, signal.SIGSEGV)
        end = list(events)[-1]
    assert isinstance(end, End) and end.error is not None
    assert "segmentation fault" in end.error.message
    assert answer(model_server.url, "ws", SHORT)[1].status in (Status.DONE, Status.TOKENS)


def busy_for(pid: int, seconds: float, within: float) -> float:
    """The CPU seconds ``pid``'s tree uses from now until it has used ``seconds`` or ``within`` passed."""
    cpu0, deadline = tree_cpu_seconds(pid), time.monotonic() + within
    while (busy := tree_cpu_seconds(pid) - cpu0) < seconds and time.monotonic() < deadline:
        time.sleep(0.1)
    return busy


def test_a_stop_during_prompt_processing_stops_the_computation(model_server: ServerHandle) -> None:
    answer(model_server.url, "stream", SHORT)  # the model process is loaded and idle
    # ~3,500 tokens (the context holds 4,096): seconds of prompt processing on two cores
    long = " ".join(f"item{i}" for i in range(850))
    request = TurnRequest(user_message=Message("user", f"{long}\nHow many items?"), temperature=0.0, max_tokens=8)
    server = os.getpid()
    with connect(model_server.url, token=TOKEN, transport="stream", timeout=60) as client:
        turn = client.stream(request)
        events: queue.Queue[Any] = queue.Queue()
        reader = threading.Thread(target=lambda: [events.put(e) for e in turn], daemon=True)
        reader.start()
        busy = busy_for(server, 0.3, within=3.0)  # less than a core each while other work runs beside
        assert events.empty(), f"{events.queue[0]} came before the interrupt"
        turn.interrupt()
        reader.join(30)
    seen = list(events.queue)
    assert isinstance(seen[-1], End) and seen[-1].status is Status.INTERRUPTED
    assert not any(isinstance(e, Chunk) for e in seen)
    assert busy >= 0.3, f"the model was not processing the prompt ({busy:.2f} s CPU in 3 s)"
    windows = quiet_after(server)  # a prompt still in evaluation keeps every window busy
    assert min(windows) < 0.05 and windows[-1] < 0.1, f"CPU per half second after the interrupt: {windows}"
    assert answer(model_server.url, "stream", SHORT)[1].status in (Status.DONE, Status.TOKENS)


async def test_the_loaded_library_is_safe_on_this_cpu() -> None:
    backend = SmolLM2Backend()
    await backend.start()
    info = backend.model.info
    check = check_library(str(info["system_info"]), read_cpu()[1])
    assert check.features, info  # the system info was read
    assert check.runs_here, check.problems()
    # no AMX code in the library, or llama.cpp's AMX path (its extra buffer types) switched off
    assert not check.amx or info["extra_buffers"] is False


def run_cell(client: Any, code: str, on_output: Any = None, timeout: float = 120) -> tuple[str, list[str]]:
    """Execute ``code`` in a real kernel; the reply's status and the text of every output."""
    msg_id = client.execute(code)
    texts: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind in ("display_data", "update_display_data", "execute_result"):
            texts.append(content["data"].get("text/markdown") or content["data"].get("text/plain", ""))
        elif kind == "stream":
            texts.append(content["text"])
        elif kind == "comm_msg" and content["data"].get("method") == "custom":  # %%chat's live view: new text
            texts.append(content["data"]["content"].get("text", ""))
        elif kind == "error":
            texts.append(f"{content['ename']}: {content['evalue']}")
        if on_output is not None and texts:
            on_output(texts)
        if kind == "status" and content["execution_state"] == "idle":
            break
    reply = client.get_shell_msg(timeout=10)
    return reply["content"]["status"], texts


def test_chat_magic_in_a_kernel_survives_its_model_process_dying() -> None:
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        kernel_pid = manager.provisioner.process.pid  # type: ignore[union-attr]
        assert run_cell(client, "%load_ext nbchat\nx = 41")[0] == "ok"
        killed: list[int] = []

        def kill_once_streaming(texts: list[str]) -> None:
            if not killed and len(texts) >= 3:  # the answer is streaming into the cell
                victims = model_processes(kernel_pid)
                assert len(victims) == 1, victims
                os.kill(victims[0], signal.SIGKILL)
                killed.append(victims[0])

        status, texts = run_cell(client, "%%chat --temperature 0 --max-tokens 400\nCount from 1 to 500.",
                                 on_output=kill_once_streaming)
        assert killed, "the answer never streamed"
        assert "model process died" in texts[-1] and "SIGKILL" in texts[-1], texts[-1]
        assert run_cell(client, "print(x + 1)")[1] == ["42\n"]  # the kernel and its state are intact
        survivor: list[int] = []

        def interrupt_once_streaming(texts: list[str]) -> None:
            if not survivor and len(texts) >= 3 and "\\[" not in texts[-1]:  # streaming, no footer yet
                survivor.extend(model_processes(kernel_pid))
                manager.interrupt_kernel()  # what the notebook's stop button does

        status, texts = run_cell(client, "%%chat --new --temperature 0 --max-tokens 400\nCount from 1 to 500.",
                                 on_output=interrupt_once_streaming)
        assert survivor, "the answer never streamed"
        assert "INTERRUPTED" in texts[-1], texts
        assert model_processes(kernel_pid) == survivor  # the interrupt stopped the turn, not the model process
        status, texts = run_cell(client, "%%chat --temperature 0 --max-tokens 12\nName a colour.")
        assert status == "ok"
        assert texts[-1].rstrip().endswith(("\\[DONE\\]*", "\\[TOKENS\\]*")), texts[-1]
        assert model_processes(kernel_pid) and model_processes(kernel_pid)[0] != killed[0]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_doctor_reports_the_library_the_cpu_and_a_real_run() -> None:
    done = subprocess.run([sys.executable, "-m", "nbchat", "doctor"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    name, flags = read_cpu()
    lines = done.stdout.splitlines()
    assert any(line.startswith("CPU: ") and name in line for line in lines)
    library = next(line for line in lines if line.startswith("llama-cpp-python "))
    assert "AMX" not in library or "WARNING" in done.stdout
    assert "AVX2" in library or "avx2" not in flags  # the build uses the CPU's instruction sets
    rate = next(line for line in lines if line.startswith("decoding: "))
    assert float(rate.split()[1]) > 1
    assert lines[-1] == "OK: the embedded model runs safely here"


def test_the_runtime_switch_reaches_llama_cpp_model_params() -> None:
    # The guard for libraries with AMX code: the model is loaded with use_extra_bufts off.
    import llama_cpp

    from nbchat.backends.llama_model import model_params_without_extra_buffers
    from nbchat.backends.smollm2 import find_gguf

    with model_params_without_extra_buffers(llama_cpp):
        guarded = llama_cpp.Llama(model_path=str(find_gguf()), vocab_only=True, verbose=False)
    plain = llama_cpp.Llama(model_path=str(find_gguf()), vocab_only=True, verbose=False)
    try:
        assert guarded.model_params.use_extra_bufts is False
        assert plain.model_params.use_extra_bufts is True  # llama.cpp's default, restored after the load
    finally:
        guarded.close()
        plain.close()


def test_load_ext_loads_the_model_before_the_first_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.getipython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    from nbchat.notebook.kernel_server import KernelServer, set_kernel_server
    from nbchat.notebook.magics import load_ipython_extension

    monkeypatch.setenv("NBCHAT_CACHE_MB", "17")  # a model process of its own, not one another test loaded
    monkeypatch.delenv("NBCHAT_URL", raising=False)
    model = SmolLM2Backend().model
    assert model.pid is None
    kernel = KernelServer()
    old = set_kernel_server(kernel)
    try:
        load_ipython_extension(start_ipython() or get_ipython())
        deadline = time.monotonic() + 60
        while not model.info and time.monotonic() < deadline:
            time.sleep(0.05)
        assert model.info.get("pid") == model.pid and not kernel.running  # loaded, before any server or chat
        kernel.endpoint()  # the first chat starts the server, which finds the model loaded
        assert model.info.get("pid") == model.pid
    finally:
        kernel.stop()
        set_kernel_server(old)


def test_the_first_chat_benchmark_times_a_fresh_shell() -> None:
    from nbchat.bench.firstchat import one_run

    marks = one_run(0.0)  # a fresh process: %load_ext, then at once a %%chat on the embedded model
    assert 0 < marks["first token"] < marks["cell end"], marks
