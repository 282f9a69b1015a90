"""A notebook on the Hub finds the nbchat service by itself.

A real single-user server, spawned by the Hub (``SimpleLocalProcessSpawner``) with the operator's
``c.Spawner.environment`` naming the service (``NBCHAT_URL``), runs a kernel created through its
REST API with the user's token; cells go to it over the server's kernel WebSocket in the Jupyter
message format (:class:`jupyter_client.session.Session`), as JupyterLab sends them. Nothing in the
cells configures nbchat: ``%%chat`` and ``ChatWidget`` must reach the service (its echo backend
answers) with the kernel's ``JUPYTERHUB_API_TOKEN``, and no server starts in the kernel.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets.sync.client

from nbchat.bench.hubrun import LocalHub
from tests.hub.conftest import MODEL, HubPool, new_user

pytestmark = pytest.mark.hub

SPAWN_TIMEOUT = 120.0
DISPLAYS = ("display_data", "update_display_data", "execute_result")
QUESTION = "Hello from a notebook on the Hub, no configuration"


@dataclass
class Cell:
    """What a cell printed, displayed and raised."""

    stdout: str = ""
    stderr: str = ""
    markdown: list[str] = field(default_factory=list)
    error: str | None = None


class RemoteKernel:
    """A kernel of a user's server on the Hub, driven over the server's kernel WebSocket."""

    def __init__(self, ws: Any) -> None:
        from jupyter_client.session import Session

        self.ws = ws
        # the server's WebSocket carries messages as JSON and signs them itself: this key signs nothing
        self.session = Session(username="nbchat-tests", key=uuid.uuid4().hex.encode())

    def run(self, code: str, timeout: float = 60.0) -> Cell:
        from jupyter_client.jsonutil import json_default

        msg = self.session.msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                                   "user_expressions": {}, "allow_stdin": False,
                                                   "stop_on_error": True})
        msg["channel"] = "shell"
        self.ws.send(json.dumps(msg, default=json_default))
        cell, replied, idle = Cell(), False, False
        deadline = time.monotonic() + timeout
        while not (replied and idle):
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
                continue
            kind, content = reply["msg_type"], reply["content"]
            if kind == "execute_reply":
                replied = True
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "stream":
                setattr(cell, content["name"], getattr(cell, content["name"]) + content["text"])
            elif kind in DISPLAYS and "text/markdown" in content["data"]:
                cell.markdown.append(content["data"]["text/markdown"])
            elif kind == "error":
                cell.error = f"{content['ename']}: {content['evalue']}"
        return cell


def spawn(hub: LocalHub, name: str) -> None:
    """Start the user's server through the Hub's REST API and wait until the Hub says it is ready."""
    hub.api("POST", f"/users/{name}/server")
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while not hub.api("GET", f"/users/{name}").json()["servers"].get("", {}).get("ready"):
        # the Hub's spawn is a process start: nothing to await from here but its REST API
        assert time.monotonic() < deadline, f"the single-user server did not start: {hub.tail()}"
        time.sleep(0.3)


@contextmanager
def user_kernel(hub: LocalHub) -> Iterator[RemoteKernel]:
    """A fresh kernel in a fresh user's single-user server, spawned by the Hub."""
    user = new_user(hub)
    spawn(hub, user.name)
    auth = {"Authorization": f"token {user.token}"}
    server = f"{hub.url}/user/{user.name}"
    made = httpx.post(f"{server}/api/kernels", json={"name": "python3"}, headers=auth, timeout=60)
    assert made.status_code == 201, made.text
    kernel_id = made.json()["id"]
    url = f"{server.replace('http', 'ws', 1)}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
    try:
        with websockets.sync.client.connect(url, additional_headers=auth, max_size=None) as ws:
            yield RemoteKernel(ws)
    finally:
        httpx.delete(f"{server}/api/kernels/{kernel_id}", headers=auth, timeout=30)
        hub.api("DELETE", f"/users/{user.name}/server")


@pytest.fixture(scope="module")
def kernel(hub: LocalHub) -> Iterator[RemoteKernel]:
    with user_kernel(hub) as made:
        yield made


def test_the_kernel_has_what_the_hub_and_the_operator_gave_it(kernel: RemoteKernel, hub: LocalHub) -> None:
    cell = kernel.run("import os, json\nprint(json.dumps({k: k in os.environ for k in "
                      "('NBCHAT_URL', 'NBCHAT_TOKEN', 'JUPYTERHUB_API_TOKEN')}), os.environ['NBCHAT_URL'],"
                      " os.environ['JUPYTERHUB_USER'], sep='|')")
    assert cell.error is None, cell
    flags, url, user = cell.stdout.strip().split("|")
    assert json.loads(flags) == {"NBCHAT_URL": True, "NBCHAT_TOKEN": False, "JUPYTERHUB_API_TOKEN": True}
    assert url == f"{hub.service_url}/" and user.startswith("user")  # a server the Hub spawned for a user


def test_chat_reaches_the_service_with_no_configuration(kernel: RemoteKernel, hub: LocalHub) -> None:
    assert kernel.run("%load_ext nbchat").error is None
    cell = kernel.run(f"%%chat\n{QUESTION}")
    assert cell.error is None, cell
    assert cell.markdown and QUESTION in cell.markdown[-1]  # the echo backend: the service answered
    check = kernel.run("from nbchat.notebook.kernel_server import kernel_server\n"
                       "print(json.dumps({'answer': _chat, 'server': _chat_provenance['server'],"
                       " 'backend': _chat_provenance['backend'], 'kernel_server': kernel_server().running}))")
    assert check.error is None, check
    assert json.loads(check.stdout) == {"answer": QUESTION, "server": hub.service_url, "backend": "echo",
                                        "kernel_server": False}


def test_the_chat_used_the_kernels_hub_token(kernel: RemoteKernel) -> None:
    # without the Hub's token the same cell is refused: the token above was what let it in
    cell = kernel.run("_hub_token = os.environ.pop('JUPYTERHUB_API_TOKEN')\n"
                      "try:\n    get_ipython().run_cell_magic('chat', '', 'refused')\n"
                      "finally:\n    os.environ['JUPYTERHUB_API_TOKEN'] = _hub_token")
    assert "answered 401" in cell.stderr and "JupyterHub service" in cell.stderr, cell  # %%chat's one-line error


def test_a_widget_reaches_the_service_with_no_configuration(kernel: RemoteKernel) -> None:
    cell = kernel.run("from nbchat import ChatWidget\nfrom nbchat.notebook.kernel_server import kernel_server\n"
                      "w = ChatWidget(transport='sse')\nw.ask('from a widget')\n"
                      "end = await w.wait()\nprint(end.status.value, w.messages[-1]['content'],"
                      " w.messages[-1]['provenance']['backend'], kernel_server().running, sep='|')")
    assert cell.error is None, cell
    assert cell.stdout.strip() == "[DONE]|from a widget|echo|False"


@pytest.mark.model
def test_chat_reaches_the_service_on_the_embedded_model(hub_pool: HubPool) -> None:
    """The default path: the service with the embedded model (``nbchat serve --jupyterhub`` as it starts)."""
    with user_kernel(hub_pool.get(service_args=MODEL)) as remote:
        assert remote.run("%load_ext nbchat").error is None
        cell = remote.run("%%chat --max-tokens 24\nSay hello in five words.", timeout=180)
        assert cell.error is None and not cell.stderr, cell
        check = remote.run("import json\nfrom nbchat.notebook.kernel_server import kernel_server\n"
                           "print(json.dumps({'answer': bool(_chat.strip()), 'backend': _chat_provenance['backend'],"
                           " 'ended': _chat_provenance['status'] in ('[DONE]', '[TOKENS]'),"
                           " 'kernel_server': kernel_server().running}))")
        assert json.loads(check.stdout) == {"answer": True, "backend": "smollm2", "ended": True,
                                            "kernel_server": False}, check
