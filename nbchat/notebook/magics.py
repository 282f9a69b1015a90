"""The ``%%chat`` cell magic and the ``%chat`` line magic.

The cell body is the user's message; the answer streams into the cell live
(rendered block by block, see :mod:`.live`) and ends as a plain
``text/markdown`` output, so it stays in the saved notebook and renders on
GitHub. The :class:`ChatMagics` instance holds the
:class:`~nbchat.notebook.conversation.Conversation`; the in-kernel server is the
kernel's one, shared with every ``ChatWidget`` (:func:`.kernel_server.kernel_server`).

The turn runs in the cell's thread (:func:`.turn.run_turn`): the cell blocks
while the answer streams, and a kernel interrupt (KeyboardInterrupt) interrupts the turn.
"""

from __future__ import annotations

import argparse
import os
import shlex
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast

from IPython.core import magic
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, magics_class

from ..wire.contract import transport_name
from .conversation import Conversation
from .kernel_server import KernelServer, describe_destination, starts_kernel_server
from .kernel_server import kernel_server as _kernel_server
from .live import StreamView
from .options import ChatOptions
from .render import TurnStats
from .turn import TurnRun, run_turn

LINE_ACTIONS = ("show", "history", "reset", "last", "code", "export", "widget", "start", "stop")


# IPython prints exactly UsageError (not a subclass) as one line without a traceback, and
# marks the cell failed so that "Run all" stops there: the right shape for a chat that cannot run.
ChatError = UsageError


@dataclass
class ChatResult:
    """What one ``%%chat`` cell produced."""

    answer: str
    status: str
    stats: TurnStats
    #: the answer's provenance, as kept in the output's ``metadata["nbchat"]``
    provenance: dict[str, Any]


def interpolate(text: str, namespace: dict[str, Any]) -> str:
    """Fill ``{name}`` (and ``{name.attr}``, ``{name[0]}``, ``{name!r}``) from the namespace;
    ``{{`` and ``}}`` are literal braces, as in ``str.format``."""
    try:
        return string.Formatter().vformat(text, (), namespace)
    except KeyError as exc:
        raise ChatError(f"{{{exc.args[0]}}} is not defined in the notebook: define it, write {{{{ and }}}} "
                        "for literal braces, or use --raw") from None
    except (ValueError, IndexError, AttributeError) as exc:
        raise ChatError(f"cannot fill in the message: {exc}; write {{{{ and }}}} for literal braces, "
                        "or use --raw") from None


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option line as one ChatError line instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ChatError(f"{self.prog}: {message}")


def _parser(prog: str, cell: bool) -> _Parser:
    parser = _Parser(prog=prog, add_help=False)  # -h is handled by _parse: argparse's would exit
    if not cell:
        parser.add_argument("action", nargs="?", default="show", help=" | ".join(LINE_ACTIONS))
        parser.add_argument("file", nargs="?", help="export: the file to write (.md or .json)")
    # The same options for %%chat (this cell) and %chat (the defaults for later cells).
    parser.add_argument("--transport", "-t", help="ws, sse, stream (or ndjson) or openai")
    parser.add_argument("--server", help="URL of a running nbchat server (default: $NBCHAT_URL, else one in "
                        "this kernel)")
    parser.add_argument("--token", help="the server's token (default: $NBCHAT_TOKEN)")
    parser.add_argument("--model", help="model name, for servers with several")
    parser.add_argument("--temperature", type=float, help="0 to 2")
    parser.add_argument("--max-tokens", type=int, help="stop after this many tokens")
    parser.add_argument("--system", help="system prompt")
    if cell:
        parser.add_argument("--new", action="store_true", help="start a fresh conversation")
        parser.add_argument("--raw", action="store_true", help="send the cell as is: no {name} interpolation")
        parser.add_argument("--out", "-o", help="also store the answer in this variable")
        parser.add_argument("--no-widget", action="store_true",
                            help="stream as a Markdown output replaced ~20 times a second (for front ends "
                            "without Jupyter widgets)")
    return parser


def _parse(parser: _Parser, line: str) -> argparse.Namespace | None:
    """The parsed options, or None when ``-h``/``--help`` asked for (and got) the usage."""
    try:
        words = shlex.split(line)
    except ValueError as exc:  # an unclosed quote
        raise ChatError(f"{parser.prog}: {exc}") from None
    if "-h" in words or "--help" in words:
        print(parser.format_help())
        return None
    return parser.parse_args(words)


CELL_PARSER = _parser("%%chat", cell=True)
LINE_PARSER = _parser("%chat", cell=False)


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _cell_magic(name: str) -> Callable[[_Method], _Method]:
    """IPython's ``cell_magic``, typed: untyped in IPython 8, typed too narrowly in 9; the
    decorator returns the method unchanged, so the checks hold on both."""
    decorate: Callable[[_Method], _Method] = cast(Any, magic).cell_magic(name)
    return decorate


def _line_magic(name: str) -> Callable[[_Method], _Method]:
    """IPython's ``line_magic``, typed as :func:`_cell_magic` is."""
    decorate: Callable[[_Method], _Method] = cast(Any, magic).line_magic(name)
    return decorate


@magics_class
class ChatMagics(Magics):
    """``%%chat`` and ``%chat``, with the conversation and the in-kernel server they share."""

    def __init__(self, shell: InteractiveShell | None = None, kernel_server: KernelServer | None = None) -> None:
        Magics.__init__(self, shell)
        self.conversation = Conversation()
        self.kernel_server = kernel_server or _kernel_server()
        self.last: ChatResult | None = None
        #: makes the cell's live output (``widget=False``: Markdown updates); a seam for tests
        self.view_factory: Callable[..., StreamView] = StreamView

    @_cell_magic("chat")
    def chat_cell(self, line: str, cell: str) -> None:
        """Send the cell to the model and stream the answer here.

        ``{name}`` in the cell is replaced by the notebook variable ``name``
        (``{{`` and ``}}`` are literal braces; ``--raw`` turns this off). The
        answer is also in ``_chat`` (and ``%chat last``), where it came from in
        ``_chat_provenance`` (as the output's ``metadata["nbchat"]`` keeps it).
        """
        args = _parse(CELL_PARSER, line)
        if args is None:
            return
        options = self._options(args)
        text = cell.strip("\n") if args.raw else interpolate(cell.strip("\n"), self._user_ns)
        if not text.strip():
            raise ChatError("the cell is empty: write the message below %%chat")
        if args.new:
            self.conversation.reset()
        result = self._run_turn(text, options, widget=False if args.no_widget else None)
        self._user_ns["_chat"] = result.answer
        self._user_ns["_chat_provenance"] = result.provenance
        if args.out:
            self._user_ns[args.out] = result.answer

    @_line_magic("chat")
    def chat_line(self, line: str) -> Any:
        """Show or change the chat defaults, or act on the conversation.

        ``%chat`` shows the defaults, options change them (``%chat -t sse
        --temperature 0.2``); ``%chat history`` prints the conversation,
        ``%chat reset`` forgets it, ``%chat last`` returns the last answer,
        ``%chat widget`` returns a chat widget sharing this conversation,
        ``%chat start`` starts the in-kernel server now (ahead of the first
        chat), ``%chat stop`` stops it.
        """
        args = _parse(LINE_PARSER, line)
        if args is None:
            return None
        if args.action not in LINE_ACTIONS:
            raise ChatError(f"unknown action {args.action!r}: use one of {', '.join(LINE_ACTIONS)}")
        self.conversation.options = self._options(args)
        if args.action == "history":
            print(self.conversation.transcript())
        elif args.action == "reset":
            self.conversation.reset()
            print("nbchat: conversation cleared")
        elif args.action == "last":
            return self.conversation.last_answer
        elif args.action == "code":
            self._code_to_next_cell()
        elif args.action == "export":
            self._export(args.file)
        elif args.action == "widget":
            from .widget import ChatWidget

            return ChatWidget(conversation=self.conversation, kernel_server=self.kernel_server)
        elif args.action == "start":
            endpoint = self.kernel_server.endpoint()
            print(f"nbchat: the server in this kernel runs at {endpoint.url}")
        elif args.action == "stop":
            self.kernel_server.stop()
        elif args.action == "show":
            self._show()
        return None

    @property
    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None, "ChatMagics needs a shell"
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    def _code_to_next_cell(self) -> None:
        from .export import code_cell

        answer = self.conversation.last_answer
        source = code_cell(answer) if answer is not None else None
        if source is None:
            raise ChatError("nbchat: the last answer has no code block" if answer is not None
                            else "nbchat: no answer yet: run a %%chat cell first")
        assert self.shell is not None
        self.shell.set_next_input(source, replace=False)

    def _export(self, file: str | None) -> None:
        from .export import write_export

        if not file:
            raise ChatError("%chat export: name the file to write, e.g. %chat export chat.md (or chat.json)")
        try:
            path = write_export(self.conversation, os.path.expanduser(file))
        except (ValueError, OSError) as exc:
            raise ChatError(f"%chat export: {exc}") from None
        count = len(self.conversation)
        print(f"nbchat: {count} exchange{'' if count == 1 else 's'} written to {path}")

    def _show(self) -> None:
        server = "running" if self.kernel_server.running else "not started"
        options = self.conversation.options
        print(f"{options.describe()}\n{'history':12} {len(self.conversation)} exchanges\n"
              f"{'chats go to':12} {describe_destination(options.server, options.token)}\n"
              f"{'kernel server':12} {server}")

    def _options(self, args: Any) -> ChatOptions:
        try:
            transport = None if args.transport is None else transport_name(args.transport)
        except ValueError as exc:
            raise ChatError(str(exc)) from None
        return self.conversation.options.merged(
            transport=transport, server=args.server, token=args.token, model=args.model,
            temperature=args.temperature, max_tokens=args.max_tokens, system=args.system)

    def _run_turn(self, text: str, options: ChatOptions, widget: bool | None = None) -> ChatResult:
        view = self.view_factory(widget=widget)
        run = TurnRun.begin(text, options)
        if starts_kernel_server(options.server, self.kernel_server):
            view.start("*starting the nbchat server in this kernel (first use)…*")
        run_turn(run, self.conversation, self.kernel_server, _ViewSink(view))
        record = run.provenance(self.conversation.server_info.get(run.url)) if run.url is not None else None
        if view.started:  # what arrived stays, also before an error
            # One message with the provenance: a second update would make the page render it all again.
            view.finish(run.answer, run.footer, None if record is None else {"nbchat": record})
        if run.error is not None:
            raise ChatError(f"nbchat ({options.transport}): {run.error}")
        assert record is not None  # a turn that reached its End reached a server
        result = ChatResult(run.answer, run.status, run.stats, record)
        self.conversation.record(text, result.answer, result.status, record)
        self.last = result
        return result


class _ViewSink:
    """The cell's live output as the turn's sink."""

    def __init__(self, view: StreamView) -> None:
        self.view = view

    def open(self) -> None:
        self.view.start()

    def add(self, text: str) -> None:
        self.view.add(text)


def load_ipython_extension(ip: InteractiveShell) -> None:
    magics = ChatMagics(ip)
    ip.register_magics(magics)
    magics.kernel_server.preload()  # the first %%chat then finds the model loaded, or loading


def unload_ipython_extension(ip: InteractiveShell) -> None:
    magics = ip.magics_manager.registry.get("ChatMagics") if ip.magics_manager is not None else None
    if isinstance(magics, ChatMagics):
        magics.kernel_server.stop()
