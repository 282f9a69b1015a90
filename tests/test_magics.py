"""``%%chat`` and ``%chat`` in IPython's test shell, against real servers on every transport.

Display traffic is recorded at the shell's display publisher, the same place
a kernel sends ``display_data`` / ``update_display_data`` from.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from IPython.core.error import UsageError
from IPython.core.getipython import get_ipython
from IPython.core.interactiveshell import InteractiveShell
from IPython.testing.globalipapp import start_ipython

from nbchat.backends.base import Backend, Finish, GenerationRequest
from nbchat.clients import TRANSPORTS
from nbchat.notebook.kernel_server import KernelServer, set_kernel_server
from nbchat.notebook.live import MAX_PARTS, PART_CHARS
from nbchat.notebook.magics import ChatMagics, StreamView, interpolate, load_ipython_extension
from nbchat.notebook.options import ChatOptions
from nbchat.notebook.render import TurnStats, answer_markdown, open_fence, safe_markdown, split_blocks
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle
from nbchat.wire.errors import ServerStartError
from tests.helpers import TOKEN, CapturingBackend, RecordingBackend, ServerFactory

MESSAGE = "Hello 你好 🚀 <b>bold</b> " * 40


class CountingBackend(Backend):
    """Answers with how many messages the model was given, to observe the history sent."""

    name = "counting"

    @property
    def model_name(self) -> str:
        return "counting"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        roles = ",".join(m.role for m in request.messages)
        yield f"{len(request.messages)} messages: {roles}"


class Published:
    """Every display message the shell publishes: (bundle, update?)."""

    def __init__(self) -> None:
        self.messages: list[tuple[dict[str, Any], bool]] = []
        self.metadata: list[Any] = []

    def __call__(self, data: dict[str, Any], metadata: Any = None, **kwargs: Any) -> None:
        self.messages.append((data, bool(kwargs.get("update"))))
        self.metadata.append(metadata)

    @property
    def last_markdown(self) -> str:
        return str(self.messages[-1][0]["text/markdown"])


@pytest.fixture
def ip(monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    # start_ipython makes the shell once per process and returns None afterwards.
    shell = start_ipython() or get_ipython()
    assert isinstance(shell, InteractiveShell)
    monkeypatch.delenv("NBCHAT_URL", raising=False)
    monkeypatch.delenv("NBCHAT_TOKEN", raising=False)
    yield shell


@pytest.fixture
def published(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> Published:
    recorder = Published()
    monkeypatch.setattr(ip.display_pub, "publish", recorder)
    return recorder


@pytest.fixture
def magics(ip: InteractiveShell) -> Iterator[ChatMagics]:
    # A fresh instance per test: its conversation and kernel server start empty.
    instance = ChatMagics(ip, kernel_server=KernelServer(backend="echo", rate=0.0))
    ip.register_magics(instance)
    yield instance
    instance.kernel_server.stop()


def chat(ip: InteractiveShell, server: ServerHandle, body: str, options: str = "") -> Any:
    return ip.run_cell(f"%%chat --server {server.url} --token {TOKEN} {options}\n{body}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_answer_streams_into_a_markdown_output(ip: InteractiveShell, magics: ChatMagics, published: Published,
                                               echo_server: ServerHandle, transport: str) -> None:
    result = chat(ip, echo_server, MESSAGE, f"-t {transport} --max-tokens 100000")
    assert result.success, result.error_in_exec
    assert ip.user_ns["_chat"] == MESSAGE.strip("\n")
    first, *updates = published.messages
    assert not first[1] and all(update for _, update in updates)  # one output, then updates of it
    final = published.last_markdown
    assert "&lt;b>bold&lt;/b>" in final and "<b>" not in final  # the model's HTML stays text
    assert f"*{transport} · first token" in final and "\\[DONE\\]*" in final
    assert magics.last is not None and magics.last.status == "[DONE]"


def test_fast_stream_updates_are_coalesced(ip: InteractiveShell, magics: ChatMagics, published: Published,
                                           make_server: ServerFactory) -> None:
    server = make_server(rate=400.0)  # 400 chunks a second for ~1.5 s
    began = time.monotonic()
    result = chat(ip, server, "abcd" * 600, "--max-tokens 100000")
    elapsed = time.monotonic() - began
    assert result.success
    assert magics.last is not None and magics.last.stats.chunks == 600
    updates = len(published.messages)
    # At most ~20 updates a second (plus the first output and the final one), yet still live.
    assert 10 <= updates <= elapsed * 20 + 3, (updates, elapsed)


def test_unpaced_stream_costs_a_few_display_messages(ip: InteractiveShell, magics: ChatMagics,
                                                     published: Published, echo_server: ServerHandle) -> None:
    began = time.monotonic()
    result = chat(ip, echo_server, "x" * 20_000, "--max-tokens 100000")
    elapsed = time.monotonic() - began
    assert result.success and magics.last is not None and magics.last.stats.chunks == 5000
    # Bounded by time, not by the 5,000 chunks: at most ~20 a second plus the first output,
    # the final one and its provenance, however loaded the machine running this is.
    messages = len(published.messages)
    assert messages <= elapsed * 20 + 4 and messages < 5000 / 50, (messages, elapsed)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_output_metadata_carries_the_provenance(ip: InteractiveShell, magics: ChatMagics, published: Published,
                                                echo_server: ServerHandle, transport: str) -> None:
    assert chat(ip, echo_server, "where from?", f"-t {transport} --temperature 0.3 --system hi").success
    record = published.metadata[-1]["nbchat"]
    # the metadata comes with the final output, in one message: a second one would make the page render it again
    assert "\\[DONE\\]" in published.last_markdown and published.messages[-1][0] != published.messages[-2][0]
    assert (record["backend"], record["model"], record["server"]) == ("echo", "echo", echo_server.url)
    assert (record["transport"], record["temperature"], record["system"]) == (transport, 0.3, "hi")
    assert record["status"] == "[DONE]" and record["chunks"] == 3 and record["uid"]
    assert (record["turn_id"] is None) == (transport == "ws")  # the WebSocket contract does not name turns
    assert magics.last is not None and magics.last.provenance == record
    assert magics.conversation.exchanges[-1].provenance == record


def test_history_carries_across_cells_and_new_resets(ip: InteractiveShell, magics: ChatMagics,
                                                     published: Published, make_server: ServerFactory) -> None:
    server = make_server(CountingBackend())
    chat(ip, server, "first")
    chat(ip, server, "second", "--system 'be brief'")
    assert ip.user_ns["_chat"] == "4 messages: system,user,assistant,user"
    chat(ip, server, "third", "--new")
    assert ip.user_ns["_chat"] == "1 messages: user"
    assert len(magics.conversation) == 1


def test_line_magic_shows_and_changes_defaults(ip: InteractiveShell, magics: ChatMagics, published: Published,
                                               echo_server: ServerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("chat", f"-t sse --server {echo_server.url} --token {TOKEN} --temperature 0.2")
    assert magics.conversation.options.transport == "sse"
    assert ip.run_cell("%%chat -o answer\nping").success
    assert ip.user_ns["answer"] == "ping" and "*sse · " in published.last_markdown
    assert ip.run_line_magic("chat", "last") == "ping"
    ip.run_line_magic("chat", "history")
    ip.run_line_magic("chat", "")
    out = capsys.readouterr().out
    assert "user: ping\nassistant: ping" in out and "'sse'" in out and "temperature" in out
    ip.run_line_magic("chat", "reset")
    assert len(magics.conversation) == 0 and ip.run_line_magic("chat", "last") is None


def test_line_magic_shows_an_unset_temperature_as_the_backends_default(
        ip: InteractiveShell, magics: ChatMagics, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("chat", "")
    line = next(text for text in capsys.readouterr().out.splitlines() if text.startswith("temperature"))
    assert "None" not in line and "default" in line
    ip.run_line_magic("chat", "--temperature 0.3")
    assert "temperature  0.3" in capsys.readouterr().out.splitlines()


def test_interpolation_fills_variables_and_keeps_double_braces(ip: InteractiveShell, magics: ChatMagics,
                                                               published: Published,
                                                               echo_server: ServerHandle) -> None:
    ip.user_ns.update(name="Ada", scores=[3, 4])
    assert chat(ip, echo_server, "hi {name}, {scores[1]} {{literal}}").success
    assert ip.user_ns["_chat"] == "hi Ada, 4 {literal}"
    assert chat(ip, echo_server, "{untouched}", "--raw").success
    assert ip.user_ns["_chat"] == "{untouched}"


def test_interpolation_errors_say_what_to_do() -> None:
    with pytest.raises(UsageError, match=r"\{nobody\} is not defined.*\{\{"):
        interpolate("hi {nobody}", {})
    with pytest.raises(UsageError, match="literal braces"):
        interpolate("a } b", {})


def _error_line(ip: InteractiveShell, capsys: pytest.CaptureFixture[str], cell: str) -> str:
    result = ip.run_cell(cell)
    captured = capsys.readouterr()
    assert type(result.error_in_exec) is UsageError  # IPython prints exactly this type without a traceback
    message = str(result.error_in_exec)
    assert "\n" not in message and "Traceback" not in captured.out + captured.err
    return message


def test_errors_are_one_clear_line(ip: InteractiveShell, magics: ChatMagics, published: Published,
                                   echo_server: ServerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    assert "cannot connect" in _error_line(ip, capsys, "%%chat --server http://127.0.0.1:9\nhi")
    wrong = _error_line(ip, capsys, f"%%chat -t sse --server {echo_server.url} --token nope\nhi")
    assert "401" in wrong and "token" in wrong
    unknown = _error_line(ip, capsys, f"%%chat -t pigeon --server {echo_server.url}\nhi")
    assert "unknown transport 'pigeon'" in unknown and "ws, sse" in unknown
    assert "is not defined" in _error_line(ip, capsys, f"%%chat --server {echo_server.url}\n{{ghost}}")
    assert "--max-tokens" in _error_line(ip, capsys, "%%chat --max-tokens many\nhi")
    assert not magics.conversation.exchanges and published.messages == []


class InterruptingView(StreamView):
    """Raises KeyboardInterrupt (as a kernel interrupt would) after a few chunks."""

    after = 5

    def add(self, content: str) -> None:
        super().add(content)
        self.after -= 1
        if self.after == 0:
            raise KeyboardInterrupt


@pytest.mark.parametrize("transport", ["ws", "sse", "stream"])
def test_kernel_interrupt_keeps_the_partial_answer(ip: InteractiveShell, magics: ChatMagics, published: Published,
                                                   make_server: ServerFactory, transport: str) -> None:
    backend = RecordingBackend(count=1000, interval=0.01)
    server = make_server(backend)
    magics.view_factory = InterruptingView
    result = chat(ip, server, "count", f"-t {transport}")
    assert result.success, result.error_in_exec
    assert magics.last is not None and magics.last.status == "[INTERRUPTED]"
    assert magics.last.answer.startswith("<0><1><2><3><4>") and backend.produced < 1000
    assert "\\[INTERRUPTED\\]" in published.last_markdown and "&lt;4>" in published.last_markdown
    assert backend.cancelled.wait(5)  # the server stopped generating
    assert magics.conversation.exchanges[-1].status == "[INTERRUPTED]"


def test_first_use_starts_a_server_in_the_kernel_and_reuses_it(ip: InteractiveShell, magics: ChatMagics,
                                                               published: Published) -> None:
    assert not magics.kernel_server.running
    assert ip.run_cell("%%chat\none").success and ip.user_ns["_chat"] == "one"
    url = magics.kernel_server.endpoint().url
    assert ip.run_cell("%%chat -t stream\ntwo").success and ip.user_ns["_chat"] == "two"
    assert magics.kernel_server.endpoint().url == url
    ip.run_line_magic("chat", "stop")
    assert not magics.kernel_server.running


def test_environment_url_is_used_when_no_server_is_given(ip: InteractiveShell, magics: ChatMagics,
                                                         published: Published, echo_server: ServerHandle,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBCHAT_URL", echo_server.url)
    monkeypatch.setenv("NBCHAT_TOKEN", TOKEN)
    assert ip.run_cell("%%chat\nfrom the environment").success
    assert not magics.kernel_server.running


def test_a_server_that_cannot_start_is_one_line(ip: InteractiveShell, published: Published,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def fail(settings: Settings) -> ServerHandle:
        raise ServerStartError("the nbchat server did not start: no model file")

    ip.register_magics(ChatMagics(ip, kernel_server=KernelServer(start=fail)))
    assert "no model file" in _error_line(ip, capsys, "%%chat\nhi")
    assert "did not start" in published.last_markdown  # the "starting..." note does not linger


def test_help_prints_the_options(ip: InteractiveShell, magics: ChatMagics,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert ip.run_cell("%%chat --help\nhi").success
    assert ip.run_line_magic("chat", "-h") is None
    out = capsys.readouterr().out
    assert "%%chat" in out and "--transport" in out and "--new" in out and "action" in out


def test_load_ext_registers_the_magics(ip: InteractiveShell) -> None:
    old = set_kernel_server(KernelServer(backend="echo"))  # no model process for this test to start
    try:
        ip.run_line_magic("load_ext", "nbchat")
    finally:
        set_kernel_server(old)
    assert "chat" in ip.magics_manager.magics["cell"] and "chat" in ip.magics_manager.magics["line"]


def test_load_ext_starts_loading_the_model_only_for_the_kernels_own_default_server(
        ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    preloads: list[object] = []
    monkeypatch.setattr("nbchat.backends.gguf.GGUFBackend.preload", lambda self: preloads.append(self))
    for kernel, url, expected in ((KernelServer(), None, 1), (KernelServer(backend="echo"), None, 0),
                                  (KernelServer(), "http://127.0.0.1:1", 0)):
        if url:
            monkeypatch.setenv("NBCHAT_URL", url)
        old = set_kernel_server(kernel)
        try:
            load_ipython_extension(ip)
        finally:
            set_kernel_server(old)
        assert len(preloads) == expected, (kernel.backend, url)
        preloads.clear()


# ---------------------------------------------------------------- rendering (pure)


def test_a_long_answer_ends_in_at_most_max_parts_outputs(published: Published,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nbchat.notebook.live.PART_INTERVAL", 0.0)  # the pacing is for a page, none here
    text = "".join(f"Paragraph {i} says a little more than the one before it.\n\n" for i in range(2000))
    assert len(text) / PART_CHARS > MAX_PARTS
    view = StreamView(widget=False)
    view.start()
    view.finish(text, "echo · [DONE]", {"nbchat": {"status": "[DONE]"}})
    (_, shown), (first, replaced), *rest = published.messages
    assert not shown and replaced and not any(update for _, update in rest)  # the first part replaces the note
    parts = [first["text/markdown"]] + [data["text/markdown"] for data, _ in rest]
    assert 1 < len(parts) <= MAX_PARTS  # JupyterLab shows 50 outputs of a cell, the rest behind a button
    assert "".join(parts).count("Paragraph ") == 2000 and parts[-1].endswith("*echo · \\[DONE\\]*")
    assert published.metadata[-1] == {"nbchat": {"status": "[DONE]"}} and not any(published.metadata[:-1])


def test_split_blocks_cuts_only_between_whole_blocks() -> None:
    fence = "```python\nx = 1\n\ny = 2\n```\n\n"
    math = "$$\na\n\nb\n$$\n\n"
    text = "para one\n\n" + fence + math + "- item\n\n  more of the item\n\nlast <b>para</b>\n"
    parts = split_blocks(text, 1)
    assert "".join(parts) == text
    assert parts == ["para one\n\n", fence, math, "- item\n\n  more of the item\n\n", "last <b>para</b>\n"]
    assert split_blocks(text, 10_000) == [text] and split_blocks("", 10) == [""]
    # each part is made safe alone exactly as within the whole
    assert "".join(safe_markdown(p) for p in parts) == safe_markdown(text)


def test_safe_markdown_escapes_html_outside_code() -> None:
    text = "a <img src=x onerror=alert(1)> & `<b>` b\n```html\n<script>x</script>\n```\n<script>y</script>"
    out = safe_markdown(text)
    assert "&lt;img src=x" in out and "&amp; `<b>`" in out
    assert "\n<script>x</script>\n" in out  # inside a fence: shown literally by Markdown already
    assert out.endswith("&lt;script>y&lt;/script>")


def test_interrupted_code_block_is_closed_before_the_footer() -> None:
    answer = "Here:\n```python\nprint(1)"
    assert open_fence(answer) == "```"
    final = answer_markdown(answer, "ws · [INTERRUPTED]")
    assert final.endswith("print(1)\n```\n\n*ws · \\[INTERRUPTED\\]*")
    assert open_fence("```\nx\n```\n") is None


def test_footer_reports_transport_first_token_chunks_and_rate() -> None:
    stats = TurnStats("sse", started=0.0)
    stats.first_token, stats.chunks, stats.ended, stats.status = 0.25, 11, 1.25, "[DONE]"
    assert stats.footer() == "sse · first token 0.25 s · 11 chunks · 10.0 tok/s · [DONE]"


# ---------------------------------------------------------------- code into cells, export

CODE_ANSWER = ("Try this:\n\n```python\nx = 41 + 1\nprint(x)\n```\n\nthen in a shell:\n\n```bash\nls -l\n```\n"
               "and <img src=x onerror=alert(1)> done.")


def test_code_puts_the_answer_code_into_the_next_cell(ip: InteractiveShell, magics: ChatMagics,
                                                      published: Published, echo_server: ServerHandle) -> None:
    ip.rl_next_input = None
    with pytest.raises(UsageError, match="no answer yet"):
        ip.run_line_magic("chat", "code")
    assert chat(ip, echo_server, CODE_ANSWER, "--raw").success
    ip.run_line_magic("chat", "code")
    source = ip.rl_next_input
    assert source == ("# block 1 of 2: python\nx = 41 + 1\nprint(x)\n\n"
                      "# block 2 of 2: bash\n# ls -l\n")
    ns: dict[str, Any] = {}
    exec(compile(source, "<next cell>", "exec"), ns)  # the cell runs as it is
    assert ns["x"] == 42
    assert chat(ip, echo_server, "```bash\necho hi\n```", "--raw").success
    ip.run_line_magic("chat", "code")
    assert ip.rl_next_input == "%%bash\necho hi\n"
    assert chat(ip, echo_server, "no code here").success
    with pytest.raises(UsageError, match="no code block"):
        ip.run_line_magic("chat", "code")


def test_export_writes_markdown_and_openai_messages_that_parse(
        ip: InteractiveShell, magics: ChatMagics, published: Published, echo_server: ServerHandle,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mistune = pytest.importorskip("mistune", reason="needs mistune (nbconvert's, in the lab extra) to parse the export")
    assert chat(ip, echo_server, "first question", "-t sse --system 'be brief'").success
    assert chat(ip, echo_server, CODE_ANSWER, "--raw").success
    ip.run_line_magic("chat", f"export {tmp_path / 'chat.json'}")
    ip.run_line_magic("chat", f"export {tmp_path / 'chat.md'}")
    assert "2 exchanges written to" in capsys.readouterr().out

    exported = json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))
    # --system held for the first cell only: the conversation's default has no system prompt
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant", "user", "assistant"]
    assert exported["messages"][3] == {"role": "assistant", "content": CODE_ANSWER}
    answers = exported["nbchat"]["answers"]
    assert [a["index"] for a in answers] == [1, 3] and answers[0]["provenance"]["transport"] == "sse"
    assert answers[0]["provenance"]["system"] == "be brief" and exported["model"] == "echo"
    assert TOKEN not in (tmp_path / "chat.json").read_text(encoding="utf-8")

    text = (tmp_path / "chat.md").read_text(encoding="utf-8")
    tokens = mistune.create_markdown(renderer="ast")(text)
    headings = ["".join(c.get("raw", "") for c in t["children"]) for t in tokens if t["type"] == "heading"]
    assert headings == ["Conversation", "User", "Assistant", "User", "Assistant"]
    codes = [(t["attrs"].get("info"), t["raw"]) for t in tokens if t["type"] == "block_code"]
    assert codes == [("python", "x = 41 + 1\nprint(x)\n"), ("bash", "ls -l\n")] * 2  # asked, then echoed
    html = mistune.html(text)
    assert "<img" not in html and "&lt;img src=x" in html  # the model's HTML stays text
    assert "echo (echo) · sse to " + echo_server.url in text and TOKEN not in text
    with pytest.raises(UsageError, match=r"\.md .* or \.json"):
        ip.run_line_magic("chat", f"export {tmp_path / 'chat.txt'}")


def test_an_unset_temperature_is_not_sent(ip: InteractiveShell, published: Published,
                                          make_server: ServerFactory) -> None:
    backend = CapturingBackend()
    server = make_server(backend)
    magics = ChatMagics(ip)
    magics.conversation.options = ChatOptions(server=server.url, token=TOKEN)
    magics.chat_cell("", "hi")
    magics.chat_cell("--temperature 0.3", "again")
    # unset, the server's backend samples as suits its model; set, what the user set is sent
    assert [request.temperature for request in backend.requests] == [None, 0.3]


class WidgetView(StreamView):
    """The live view a kernel gets (a widget fed only new text), its messages to the page recorded."""

    made: ClassVar[list[WidgetView]] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(widget=True)
        self.deltas: list[str] = []
        WidgetView.made.append(self)

    def start(self, note: str = "*waiting for the first token…*") -> None:
        super().start(note)
        self.live.send = lambda content, buffers=None: self.deltas.append(content["text"])


def test_in_a_kernel_the_answer_streams_as_new_text_and_ends_as_markdown(
        ip: InteractiveShell, magics: ChatMagics, published: Published, make_server: ServerFactory) -> None:
    server = make_server(rate=1000.0)  # ~1,400 pieces: 1.4 s, some 28 of the view's 50 ms intervals
    magics.view_factory = WidgetView
    text = "".join(f"Paragraph {i} with $x_{i}$ and `code`.\n\n" for i in range(150))
    assert chat(ip, server, text, "--max-tokens 100000 --raw").success
    view = WidgetView.made[-1]
    sent = "".join(view.deltas)  # each piece of text sent once, in order; the rest comes with the Markdown
    assert text.startswith(sent) and len(sent) > len(text) / 2
    assert 5 <= len(view.deltas) < len(text) / 4  # coalesced, yet live
    first, *rest = published.messages
    assert "application/vnd.jupyter.widget-view+json" in first[0] and not first[1]  # the live view
    # replaced in place by the answer's first part, the others (whole paragraphs, ~PART_CHARS each) after it
    assert rest[0][1] and not any(update for _, update in rest[1:]) and len(rest) >= len(text) // PART_CHARS
    parts = [data["text/markdown"] for data, _ in rest]
    assert parts[0].startswith("Paragraph 0 with $x_0$") and "\\[DONE\\]*" in parts[-1]
    assert "".join(parts).count("Paragraph ") == 150 and all(p.startswith("Paragraph ") for p in parts)
    assert published.metadata[-1]["nbchat"]["status"] == "[DONE]" and not any(published.metadata[1:-1])
    assert view.live is None  # the widget is closed: no widget state stays in the notebook


def test_no_widget_streams_markdown_updates(ip: InteractiveShell, magics: ChatMagics, published: Published,
                                            echo_server: ServerHandle) -> None:
    made: list[StreamView] = []

    def factory(widget: bool | None = None) -> StreamView:
        made.append(StreamView(widget=True if widget is None else widget))
        return made[-1]

    magics.view_factory = factory
    assert chat(ip, echo_server, "plain please", "--no-widget").success
    assert made[-1].widget is False
    assert all("application/vnd.jupyter.widget-view+json" not in data for data, _ in published.messages)
    assert published.last_markdown.startswith("plain please")
