"""The notebook layer's turn runner and its one stats line (``nbchat/notebook/turn.py``).

The direct page writes the same line (``tests/js/stats.test.mjs`` pins the same endings).
"""

from __future__ import annotations

from nbchat.notebook.conversation import Conversation
from nbchat.notebook.kernel_server import KernelServer
from nbchat.notebook.options import ChatOptions
from nbchat.notebook.turn import StopSwitch, TurnRun, error_text, run_turn
from nbchat.server.serving import ServerHandle
from nbchat.wire.errors import AuthError
from nbchat.wire.events import Chunk, End, ErrorInfo, Status
from tests.helpers import TOKEN


class Collected:
    def __init__(self) -> None:
        self.opened = 0
        self.texts: list[str] = []

    def start(self) -> None:
        self.opened += 1

    def add(self, text: str) -> None:
        self.texts.append(text)


def test_an_end_with_an_error_and_a_trimmed_history_read_as_the_page_writes_them() -> None:
    run = TurnRun.begin("hi", ChatOptions(transport="stream"))
    run.take(Chunk("partial", seq=1, trimmed=1))
    run.finish(End(Status.ERROR, ErrorInfo("backend_error", "the model died"), trimmed=1))
    assert run.footer.endswith(" · [ERROR] backend_error: the model died · history trimmed: 1 exchange")
    assert run.error is None and run.answer == "partial"


def test_an_exception_comes_after_the_figures_as_one_line() -> None:
    run = TurnRun.begin("hi", ChatOptions(transport="ws"))
    run.finish(exc=AuthError("POST /turns answered 401: bad token\nmore detail"))
    assert run.footer == "ws · no tokens · 0 chunks · [ERROR] · POST /turns answered 401: bad token"
    assert error_text(ValueError("unknown transport 'pigeon'")) == "ValueError: unknown transport 'pigeon'"
    assert error_text(RuntimeError()) == "RuntimeError"
    assert run.provenance({}) is None  # no server was reached


def test_the_sync_runner_feeds_the_sink_and_records_where_it_went(echo_server: ServerHandle) -> None:
    sink = Collected()
    options = ChatOptions(transport="sse", server=echo_server.url, token=TOKEN)
    run = TurnRun.begin("the same text back", options)
    run_turn(run, Conversation(), KernelServer(backend="echo", rate=0.0), sink)
    assert run.end is not None and run.end.status is Status.DONE and run.error is None
    assert sink.opened == 1 and "".join(sink.texts) == run.answer == "the same text back"
    record = run.provenance({})
    assert record is not None and record["server"] == echo_server.url and record["uid"] == run.uid
    assert record["transport"] == "sse" and run.turn_id is not None


def test_a_refused_turn_ends_in_its_error_without_opening_the_sink(echo_server: ServerHandle) -> None:
    sink = Collected()
    run = TurnRun.begin("hi", ChatOptions(server=echo_server.url, token="wrong"))
    run_turn(run, Conversation(), KernelServer(backend="echo", rate=0.0), sink)
    assert run.end is None and run.error is not None and "401" in run.error
    assert sink.opened == 0 and run.status == "[ERROR]"


def test_stop_before_a_stream_has_nothing_to_interrupt() -> None:
    switch = StopSwitch()
    assert switch.stop() is None and switch.requested
