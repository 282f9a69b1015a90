"""A notebook on JupyterHub finds the Hub's nbchat service by itself: ``NBCHAT_URL`` (set by the
operator for every user) and the kernel's ``JUPYTERHUB_API_TOKEN`` are all it needs, and no model
starts in the kernel.

The service lives under a path prefix (``/services/nbchat/``) behind the Hub's proxy, which passes
the full path on. Here a real server is mounted under such a prefix on a loopback port, with
everything outside the prefix answered 404, so a client that drops the prefix from any request
fails. The same tests against a real Hub are in ``tests/hub/``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from IPython.core.getipython import get_ipython
from IPython.core.interactiveshell import InteractiveShell
from IPython.testing.globalipapp import start_ipython
from starlette.types import Receive, Scope, Send

from nbchat.clients import TRANSPORTS, collect, connect
from nbchat.notebook.conversation import Conversation
from nbchat.notebook.direct import page_endpoint
from nbchat.notebook.kernel_server import Endpoint, KernelServer, resolve_endpoint
from nbchat.notebook.magics import ChatMagics
from nbchat.notebook.widget import ChatWidget
from nbchat.server.app import create_app
from nbchat.server.config import Settings
from nbchat.server.serving import NBChatServer, ServerHandle
from nbchat.wire.events import Message, Status, TurnRequest
from tests.helpers import TOKEN
from tests.test_widget import RecordingComm, click

PREFIX = "/services/nbchat"
HUB_TOKEN = TOKEN  # the prefixed server takes the test token, handed to the kernel as its Hub token
RATE = 400.0  # echo chunks per second
ENV = ("NBCHAT_URL", "NBCHAT_TOKEN", "JUPYTERHUB_API_TOKEN")


class PrefixMount:
    """Serves an ASGI app under a path prefix, as the Hub's proxy routes a service: a request outside
    the prefix gets 404 (a WebSocket is closed), so a client that drops the prefix fails."""

    def __init__(self, prefix: str, app: Any) -> None:
        self.prefix, self.app = prefix, app
        self.outside: list[str] = []  # paths asked for outside the prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            self.outside.append(path)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"outside the prefix"})
            return
        inner = path[len(self.prefix):] or "/"
        await self.app({**scope, "path": inner, "raw_path": inner.encode()}, receive, send)


class Prefixed:
    """A real echo server under :data:`PREFIX` on a loopback port."""

    def __init__(self) -> None:
        # paced, so that a turn can be interrupted while it streams
        settings = Settings(port=0, token=TOKEN, backend="echo", rate=RATE)
        self.app = create_app(settings)
        self.mount = PrefixMount(PREFIX, self.app)
        self.server = NBChatServer(uvicorn.Config(self.mount, host="127.0.0.1", port=0, log_level="warning",
                                                  lifespan="on"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        assert self.server.ready.wait(30), "the prefixed server did not start"
        #: as the operator writes it for the Hub's proxy, with the trailing slash
        self.url = f"http://127.0.0.1:{self.server.port}{PREFIX}/"

    def stop(self) -> None:
        self.server.request_exit()
        self.thread.join(15)


@pytest.fixture(scope="module")
def prefixed() -> Iterator[Prefixed]:
    server = Prefixed()
    yield server
    server.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def on_the_hub(clean_env: pytest.MonkeyPatch, prefixed: Prefixed) -> Prefixed:
    """A kernel's environment in a single-user server the Hub spawned: the service's URL and the Hub's token."""
    clean_env.setenv("NBCHAT_URL", prefixed.url)
    clean_env.setenv("JUPYTERHUB_API_TOKEN", HUB_TOKEN)
    return prefixed


class NeverStarts(KernelServer):
    """The in-kernel server, failing the test if anything starts it."""

    def __init__(self) -> None:
        super().__init__(backend="echo", start=self._refuse)

    @staticmethod
    def _refuse(settings: Settings) -> ServerHandle:
        raise AssertionError("an in-kernel server was started although NBCHAT_URL names a server")


# ---------------------------------------------------------------- the environment -> the endpoint


def test_the_hub_token_goes_to_the_service_the_environment_names(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NBCHAT_URL", "http://hub.example:8000/services/nbchat/")
    clean_env.setenv("JUPYTERHUB_API_TOKEN", "hub-secret")
    assert resolve_endpoint(None, None, NeverStarts()) == Endpoint(
        "http://hub.example:8000/services/nbchat/", "hub-secret", hub=True)


def test_an_nbchat_token_or_an_explicit_one_wins_over_the_hub_token(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NBCHAT_URL", "http://hub.example:8000/services/nbchat/")
    clean_env.setenv("JUPYTERHUB_API_TOKEN", "hub-secret")
    assert resolve_endpoint(None, "mine", NeverStarts()) == Endpoint("http://hub.example:8000/services/nbchat/", "mine")
    clean_env.setenv("NBCHAT_TOKEN", "")  # set, even empty: the operator means it
    assert resolve_endpoint(None, None, NeverStarts()).token == ""
    clean_env.setenv("NBCHAT_TOKEN", "operator")
    assert resolve_endpoint(None, None, NeverStarts()) == Endpoint("http://hub.example:8000/services/nbchat/",
                                                                   "operator")


def test_a_server_named_in_the_cell_never_gets_the_hub_token(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NBCHAT_URL", "http://hub.example:8000/services/nbchat/")
    clean_env.setenv("JUPYTERHUB_API_TOKEN", "hub-secret")
    assert resolve_endpoint("http://elsewhere:8765", None, NeverStarts()) == Endpoint("http://elsewhere:8765", None)


def test_without_nbchat_url_the_hub_token_is_not_used(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("JUPYTERHUB_API_TOKEN", "hub-secret")
    started: list[Settings] = []

    def start(settings: Settings) -> ServerHandle:
        started.append(settings)
        raise RuntimeError("not started in this test")

    with pytest.raises(RuntimeError):
        resolve_endpoint(None, None, KernelServer(backend="echo", start=start))
    assert len(started) == 1 and started[0].token is None  # the kernel's own server, its own random token


def test_the_page_never_gets_the_hub_token() -> None:
    hub = page_endpoint(Endpoint("http://hub.example:8000/services/nbchat/", "hub-secret", hub=True))
    assert hub["token"] == "" and hub["hub"] is True and hub["path"] == PREFIX
    assert "hub-secret" not in json.dumps(hub)
    own = page_endpoint(Endpoint("http://127.0.0.1:8765", "kernel-secret"))
    assert own["token"] == "kernel-secret" and own["hub"] is False and own["path"] == ""


# ---------------------------------------------------------------- clients under a path prefix


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("slash", ["/", ""])
def test_every_client_keeps_the_path_prefix(prefixed: Prefixed, transport: str, slash: str) -> None:
    url = prefixed.url.rstrip("/") + slash
    request = TurnRequest(Message("user", "under a prefix"))
    with connect(url, token=TOKEN, transport=transport) as client:
        turn = client.stream(request)
        pieces: list[str] = []
        end = collect(turn, lambda chunk: pieces.append(chunk.content))
        assert end.status is Status.DONE and "".join(pieces) == "under a prefix"
        if transport != "openai":  # the OpenAI route's stream is not resumable
            again: list[str] = []
            assert collect(client.resume(after=0, turn_id=turn.turn_id), lambda c: again.append(c.content)) == end
            assert "".join(again) == "under a prefix"
    assert prefixed.mount.outside == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_interrupt_keeps_the_path_prefix(prefixed: Prefixed, transport: str) -> None:
    long = "word " * 400  # seconds at the server's pace
    with connect(prefixed.url, token=TOKEN, transport=transport) as client, \
            client.stream(TurnRequest(Message("user", long))) as turn:
        pieces: list[str] = []

        def take(chunk: Any) -> None:
            pieces.append(chunk.content)
            if len(pieces) == 1:
                turn.interrupt()

        end = collect(turn, take)
    assert end.status is Status.INTERRUPTED and len("".join(pieces)) < len(long)
    assert prefixed.mount.outside == []


# ---------------------------------------------------------------- %%chat and the widget on the Hub


@pytest.fixture
def shell(on_the_hub: Prefixed) -> Iterator[tuple[InteractiveShell, ChatMagics]]:
    ip = start_ipython() or get_ipython()
    assert isinstance(ip, InteractiveShell)
    magics = ChatMagics(ip, kernel_server=NeverStarts())
    ip.register_magics(magics)
    yield ip, magics


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_chat_reaches_the_service_with_the_hub_token(shell: tuple[InteractiveShell, ChatMagics],
                                                     on_the_hub: Prefixed, transport: str) -> None:
    ip, magics = shell
    result = ip.run_cell(f"%%chat -t {transport}\nno configuration in the notebook")
    assert result.success, result.error_in_exec
    assert ip.user_ns["_chat"] == "no configuration in the notebook"
    assert ip.user_ns["_chat_provenance"]["server"] == on_the_hub.url.rstrip("/")
    assert ip.user_ns["_chat_provenance"]["backend"] == "echo"  # /health, asked under the prefix too
    assert not magics.kernel_server.running
    assert on_the_hub.mount.outside == []


def test_a_refused_hub_token_says_what_the_operator_grants(shell: tuple[InteractiveShell, ChatMagics],
                                                          on_the_hub: Prefixed, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    ip, _ = shell
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "not-the-token")
    result = ip.run_cell("%%chat\nrefused")
    assert not result.success
    shown = capsys.readouterr()
    assert "access:services!service=nbchat" in shown.err + shown.out
    assert "not-the-token" not in shown.err + shown.out


async def test_the_widget_reaches_the_service_with_the_hub_token(on_the_hub: Prefixed) -> None:
    widget = ChatWidget(Conversation(), kernel_server=NeverStarts(), transport="ws")
    widget.comm = RecordingComm()
    try:
        widget.ask("from the widget")
        end = await widget.wait()
        assert end is not None and end.status is Status.DONE, widget.stats
        assert widget.messages[-1]["content"] == "from the widget"
    finally:
        widget.close()


async def test_the_direct_widget_sends_the_page_no_token(on_the_hub: Prefixed) -> None:
    comm = RecordingComm()
    widget = ChatWidget(Conversation(), direct=True, kernel_server=NeverStarts(), comm=comm)
    try:
        click(widget, {"type": "hello", "origin": "http://127.0.0.1:8000"})
        for _ in range(300):
            if comm.custom("endpoint"):
                break
            await asyncio.sleep(0.1)
        endpoint = comm.custom("endpoint")[-1]["endpoint"]
        assert endpoint["hub"] is True and endpoint["token"] == "" and endpoint["path"] == PREFIX
        assert HUB_TOKEN not in json.dumps(comm.sent)
    finally:
        widget.close()


def test_nbchat_chat_in_a_hub_terminal_reaches_the_service(on_the_hub: Prefixed,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from nbchat.cli.main import main

    assert main(["chat", "--transport", "sse", "from a terminal on the Hub"]) == 0
    assert "from a terminal on the Hub" in capsys.readouterr().out
    assert on_the_hub.mount.outside == []


def test_the_line_magic_says_where_chats_go(shell: tuple[InteractiveShell, ChatMagics], on_the_hub: Prefixed,
                                            clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ip, magics = shell
    ip.run_line_magic("chat", "")
    assert f"chats go to  {on_the_hub.url} ($NBCHAT_URL, with the kernel's JupyterHub token)" in capsys.readouterr().out
    clean_env.setenv("NBCHAT_TOKEN", "operator")
    ip.run_line_magic("chat", "")
    assert "($NBCHAT_URL, with $NBCHAT_TOKEN)" in capsys.readouterr().out
    clean_env.delenv("NBCHAT_URL")
    ip.run_line_magic("chat", "")
    assert "chats go to  the kernel's own server (started on first use)" in capsys.readouterr().out
    assert not magics.kernel_server.running  # saying where is not starting it
