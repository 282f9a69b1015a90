"""``ChatWidget``: a chat panel for the notebook (an anywidget).

Traffic is shaped so that streaming costs the browser what the answer costs
and no more: while an answer streams, the kernel sends only custom messages
``{"type": "delta", "text": ...}`` holding the *new* text, coalesced to one
per ~50 ms; the full history (the ``messages`` traitlet) is synced once per
turn, at its end. Generation runs as an asyncio task on the kernel's own
loop with the async client, so the kernel stays free to receive the Stop
click while an answer streams.

The browser side (``widget.js`` and ``js/``, bundled with markdown-it, Lezer
and KaTeX into ``static/`` by ``js/build.sh``) renders Markdown, highlighted
code and math itself, from text nodes only: model output never becomes live
HTML, and nothing is fetched from the network.

``ChatWidget(direct=True)`` skips the kernel on the way: the page streams from
the server itself (see :mod:`.direct`), so an answer keeps streaming while the
kernel runs another cell.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import Callable, Coroutine
from typing import Any, cast

import anywidget
import traitlets

from ..wire.contract import DIRECT_TRANSPORTS, TRANSPORTS, Transport, transport_name
from ..wire.events import STATUS_STRINGS, End, Status
from .conversation import Conversation
from .direct import ROUTES, DirectLink, direct_transport
from .kernel_server import KernelServer
from .kernel_server import kernel_server as _kernel_server
from .options import ChatOptions
from .render import Throttle
from .turn import StopSwitch, TurnRun, arun_provenance, arun_turn

_HERE = pathlib.Path(__file__).parent

#: custom messages carry at most this much time's worth of new text
DELTA_INTERVAL = 0.05


class _DeltaBuffer:
    """Coalesces new text into one message per interval; a timer flushes the tail."""

    def __init__(self, send: Callable[[str], None], interval: float = DELTA_INTERVAL) -> None:
        self._send = send
        self._throttle = Throttle(interval)
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Nothing to show before the first text: the page showed the question at "start"."""

    def add(self, text: str) -> None:
        self._pending.append(text)
        if self._throttle.due():
            self.flush()
        elif self._timer is None:
            # Without a timer the tail would wait for the next chunk, however late it comes.
            self._timer = asyncio.get_running_loop().call_later(self._throttle.remaining(), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._throttle.mark()
        self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._send(text)


class ChatWidget(anywidget.AnyWidget):
    """A conversation view with an input, Send, Stop, a transport picker and a stats line.

    ``ChatWidget()`` talks to ``server`` (else ``$NBCHAT_URL``, else the
    kernel's own server with the embedded model, one for ``%%chat`` and every
    widget). ``%chat widget`` makes one that shares the magic's conversation.
    """

    _transport_error: str | None = None  # why the transport trait's name is no transport (relayed only)

    _esm = _HERE / "static" / "widget.js"
    _css = _HERE / "static" / "widget.css"

    #: the conversation so far: [{"role", "content", "status"?, "provenance"?}]; synced at turn ends only
    messages = traitlets.List(traitlets.Dict()).tag(sync=True)
    transport = traitlets.Unicode("ws").tag(sync=True)
    transports = traitlets.List(traitlets.Unicode()).tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)
    stats = traitlets.Unicode("").tag(sync=True)
    #: the page streams from the server itself; the endpoint and token go in custom messages, never in state
    direct = traitlets.Bool(False).tag(sync=True)
    #: direct mode: "direct" (the server's URL), "proxy" (Jupyter's /proxy/<port>/) or "auto"
    route = traitlets.Unicode("auto").tag(sync=True)

    def __init__(self, conversation: Conversation | None = None, *, server: str | None = None,
                 token: str | None = None, transport: str | None = None,
                 kernel_server: KernelServer | None = None, direct: bool = False, route: str = "auto",
                 **kwargs: Any) -> None:
        self.conversation = conversation if conversation is not None else Conversation()
        options = self.conversation.options
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, not {route!r}")
        wanted = transport or options.transport
        name = direct_transport(wanted) if direct else transport_name(wanted)
        super().__init__(transport=name, transports=list(DIRECT_TRANSPORTS if direct else TRANSPORTS),
                         messages=self._history(), direct=direct, route=route, **kwargs)
        # Explicit endpoints win; otherwise each turn reads the conversation's current defaults.
        self._server = server
        self._token = token
        self._kernel_server = kernel_server or _kernel_server()
        self._task: asyncio.Future[Any] | None = None
        self._stop = StopSwitch()
        #: what the last turn ended with (an :class:`End`), for callers and tests
        self.last_end: End | None = None
        self._mirror_shown = False
        #: direct mode: the page's figures for its last turn (TTFT, cadence, bytes per chunk)
        self.last_metrics: dict[str, Any] | None = None
        self._direct = DirectLink(self.send, self.conversation, self._kernel_server, server, token)
        self.on_msg(self._on_frontend_msg)
        if direct:  # now, not when the page says hello: by then the kernel may be busy with the next cell
            self._direct.start(self._options())

    @property
    def kernel_server(self) -> KernelServer:
        """The in-kernel server this widget uses when no server is configured (the kernel's one by default)."""
        return self._kernel_server

    @traitlets.validate("transport")
    def _valid_transport(self, proposal: Any) -> str:
        """Where the picker's (or a caller's) name enters: from here on the trait holds the canonical name."""
        value = str(proposal["value"])
        try:
            canonical = direct_transport(value) if self.direct else transport_name(value)
        except ValueError as exc:
            if self.direct:
                raise traitlets.TraitError(str(exc)) from None
            # relayed, an unknown name ends its turn with a clear error in the stats line
            self._transport_error = str(exc)
            return value
        self._transport_error = None
        return canonical

    # ------------------------------------------------------------ saved copy

    def _ipython_display_(self) -> None:
        """Show the widget, and below it a Markdown copy of the conversation that the notebook file keeps.

        Widget state is not in a saved notebook by default (JupyterLab saves it
        only when asked), so a notebook opened without a kernel, converted with
        nbconvert or shown on GitHub would lose the conversation; the copy is a
        plain ``text/markdown`` output, updated at each turn end, that they all
        render. While the widget is live its CSS hides the copy. A turn a direct widget's page streamed
        updates it when the page reports the turn's end.

        The copy comes first as nbchat's own MIME type (the conversation as data), which nbchat's JupyterLab
        extension renders ahead of the Markdown: JupyterLab then does not typeset the whole conversation again
        after every turn while the widget is live, and draws it with the widget's renderer when it shows.
        """
        from IPython.display import display

        # ipywidgets returns the bundle, anywidget (data, metadata): accept either
        bundle: Any = self._repr_mimebundle_()
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        display(data, metadata=metadata, raw=True)
        display(self._mirror_bundle(), raw=True, display_id=self._mirror_id)
        self._mirror_shown = True

    @property
    def _mirror_id(self) -> str:
        return f"nbchat-mirror-{self.model_id}"

    def _mirror_bundle(self) -> dict[str, Any]:
        from .export import TRANSCRIPT_MIME, mirror_markdown, mirror_transcript

        return {TRANSCRIPT_MIME: mirror_transcript(self.conversation),
                "text/markdown": mirror_markdown(self.conversation),
                "text/plain": self.conversation.transcript()}

    def _update_mirror(self) -> None:
        if self._mirror_shown:
            from IPython.display import update_display

            update_display(self._mirror_bundle(), raw=True, display_id=self._mirror_id)

    # ------------------------------------------------------------ control

    def _on_frontend_msg(self, _widget: Any, content: dict[str, Any], _buffers: Any) -> None:
        kind = content.get("type")
        if self.direct and kind in ("hello", "done"):
            self._on_direct_msg(kind, content)
        elif kind == "send":
            self.ask(str(content.get("text", "")))
        elif kind == "stop":
            self.stop()

    def ask(self, text: str) -> asyncio.Future[Any] | None:
        """Start a turn with ``text``; returns what :meth:`wait` awaits (None if busy or empty).

        Relayed, the kernel streams the answer in a task on its loop. Direct, the page starts the
        turn and streams it itself, even while this cell goes on to block the kernel.
        """
        if not text.strip():
            return None
        if self.direct:  # the page refuses a second turn while one streams; this future then ends with the first
            done: asyncio.Future[Any] = _running_loop().create_future()

            def settle(report: dict[str, Any]) -> None:
                if not done.done():
                    done.set_result(report)

            self._direct.ask(text, self._options(), settle)
            self._task = done
            return done
        if self._task is not None and not self._task.done():
            return None
        self._stop = StopSwitch()
        self._task = _spawn(self._run(text))
        return self._task

    def stop(self) -> None:
        """Interrupt the answer being streamed; it ends with ``[INTERRUPTED]`` and keeps its text."""
        if self.direct:
            self.send({"type": "stop"})  # the page holds the stream, and the means to stop it
            return
        interrupt = self._stop.stop()
        if interrupt is not None:
            _spawn(interrupt)

    async def wait(self) -> End | None:
        """Wait for the current turn, if any, to end."""
        if self._task is not None:
            await asyncio.shield(self._task)  # a direct turn's future resolves when the page reports
        return self.last_end

    # ------------------------------------------------------------ direct mode

    def _options(self) -> ChatOptions:
        # the trait holds a canonical name (see _valid_transport), or a name whose turn fails before connecting
        return self.conversation.options.merged(transport=cast(Transport, self.transport))

    def _on_direct_msg(self, kind: str, content: dict[str, Any]) -> None:
        if kind == "hello":
            self._direct.hello(str(content.get("origin", "")), self._options())
            return
        # "done": the page finished a turn; it joins the conversation %%chat shares
        user, answer, status = str(content.get("user", "")), str(content.get("answer", "")), str(content.get("status"))
        metrics = content.get("metrics")
        self.last_metrics = metrics if isinstance(metrics, dict) else None
        self.last_end = End(Status(status)) if status in STATUS_STRINGS else None
        self.conversation.record(user, answer, status if self.last_end is not None else Status.ERROR)
        self.messages = self._history()
        self.stats = str(content.get("stats", ""))
        self._direct.send_context(self._options())
        self._update_mirror()  # before the caller's future resolves: nbclient saves the notebook after the cell
        self._direct.finished(content)

    # ------------------------------------------------------------ a turn

    async def _run(self, text: str) -> None:
        options = self._options().merged(server=self._server, token=self._token)
        run = TurnRun.begin(text, options)
        deltas = _DeltaBuffer(lambda t: self.send({"type": "delta", "text": t}))
        self.busy = True
        self.send({"type": "start", "user": text})
        try:
            if self._transport_error is not None:  # a name the picker sent that is no transport
                run.finish(exc=ValueError(self._transport_error))
            else:
                await arun_turn(run, self.conversation, self._kernel_server, deltas, self._stop)
        finally:
            deltas.flush()
            if run.stats.ended is None:  # cancelled: the turn ends here
                run.finish()
            record = await arun_provenance(run, self.conversation)
            self._finish(run, record)

    def _finish(self, run: TurnRun, record: dict[str, Any] | None) -> None:
        self.last_end = run.end
        self.conversation.record(run.text, run.answer, run.end.status if run.end is not None else Status.ERROR,
                                 record)
        self.send({"type": "end", "status": run.status, "error": run.error})
        # One full sync per turn: the history, then the stats line.
        self.messages = self._history()
        self.stats = run.footer
        self.busy = False
        self._update_mirror()

    def _history(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for exchange in self.conversation.exchanges:
            out.append({"role": "user", "content": exchange.user})
            answer: dict[str, Any] = {"role": "assistant", "content": exchange.answer, "status": exchange.status}
            if exchange.provenance is not None:
                answer["provenance"] = exchange.provenance
            out.append(answer)
        return out


def _running_loop() -> asyncio.AbstractEventLoop:
    # The kernel's loop is running whenever a cell or a comm message is handled.
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("ChatWidget needs a running event loop (a Jupyter kernel, or an async test)") from None


#: tasks the widget started and nobody awaits (an interrupt): the loop holds tasks only weakly
_BACKGROUND: set[asyncio.Task[None]] = set()
log = logging.getLogger(__name__)


def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    try:
        loop = _running_loop()
    except RuntimeError:
        coro.close()
        raise
    task = loop.create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_settled)
    return task


def _settled(task: asyncio.Task[None]) -> None:
    _BACKGROUND.discard(task)
    if not task.cancelled() and task.exception() is not None:  # a turn ends its own errors: this is a Stop
        log.warning("nbchat: a widget task failed: %r", task.exception())
