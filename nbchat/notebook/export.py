"""What leaves the notebook: the code of an answer as a cell, and a conversation
as Markdown or as OpenAI chat messages, each with its provenance.

Pure functions over a :class:`~nbchat.notebook.conversation.Conversation`
(plus one that writes a file), shared by ``%chat code``, ``%chat export`` and
the widget's saved mirror.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from .conversation import Conversation, Exchange
from .provenance import describe, utc_now
from .render import code_blocks, safe_markdown

#: what a fence's language becomes in a Python cell: the cell magic that runs it
CELL_MAGICS = {"bash": "%%bash", "sh": "%%sh", "shell": "%%bash", "javascript": "%%javascript", "js": "%%javascript",
               "html": "%%html", "latex": "%%latex", "markdown": "%%markdown", "md": "%%markdown"}
PYTHON = ("", "python", "py", "python3", "ipython", "pycon")


def code_cell(answer: str) -> str | None:
    """The code blocks of ``answer`` as one cell's source, each headed by its language; None without code.

    One block in a language a cell magic runs (bash, HTML, ...) becomes that
    magic's cell, so it runs as it is; otherwise blocks are joined, and a block
    that is not Python is kept as comments, so the cell still runs.
    """
    blocks = code_blocks(answer)
    if not blocks:
        return None
    if len(blocks) == 1 and blocks[0][0].lower() in CELL_MAGICS:
        language, code = blocks[0]
        return f"{CELL_MAGICS[language.lower()]}\n{code.rstrip()}\n"
    parts: list[str] = []
    for number, (language, code) in enumerate(blocks, 1):
        name = language or "no language given"
        head = f"# block {number} of {len(blocks)}: {name}" if len(blocks) > 1 else f"# {name}"
        body = code.rstrip()
        if language.lower() not in PYTHON:
            body = "\n".join(f"# {line}" if line else "#" for line in body.splitlines())
        parts.append(f"{head}\n{body}")
    return "\n\n".join(parts) + "\n"


def _provenance_line(exchange: Exchange) -> str:
    if exchange.provenance is None:
        return f"*{exchange.status}*"
    text = safe_markdown(describe(exchange.provenance))
    return "*" + text.replace("[", "\\[").replace("]", "\\]").replace("*", "\\*").replace("_", "\\_") + "*"


def conversation_markdown(conversation: Conversation, *, title: str = "Conversation",
                          exported: str | None = None) -> str:
    """The conversation as Markdown: a heading per message, each answer followed by its provenance.

    Model text goes through :func:`~nbchat.notebook.render.safe_markdown`, so
    raw HTML in it shows as text wherever the file is rendered.
    """
    lines = [f"# {title}", ""]
    if exported is not None:
        lines += [f"*exported by nbchat at {exported}*", ""]
    system = conversation.options.system
    if system:
        lines += ["## System", "", safe_markdown(system).rstrip(), ""]
    for exchange in conversation.exchanges:
        lines += ["## User", "", safe_markdown(exchange.user).rstrip(), ""]
        lines += ["## Assistant", "", safe_markdown(exchange.answer).rstrip(), ""]
        lines += [_provenance_line(exchange), ""]
    if not conversation.exchanges:
        lines += ["*(no messages yet)*", ""]
    return "\n".join(lines)


def conversation_openai(conversation: Conversation, *, exported: str | None = None) -> dict[str, Any]:
    """The conversation as an OpenAI chat request's ``model`` and ``messages``, with the provenance
    of each answer under ``nbchat`` (by its index in ``messages``), so ``messages`` stays as OpenAI takes it."""
    messages: list[dict[str, str]] = []
    if conversation.options.system:
        messages.append({"role": "system", "content": conversation.options.system})
    answers: list[dict[str, Any]] = []
    for exchange in conversation.exchanges:
        messages.append({"role": "user", "content": exchange.user})
        messages.append({"role": "assistant", "content": exchange.answer})
        answers.append({"index": len(messages) - 1, "status": exchange.status,
                        "provenance": exchange.provenance})
    last = next((a["provenance"] for a in reversed(answers) if a["provenance"]), None)
    model = (last or {}).get("model") or conversation.options.model
    return {"model": model, "messages": messages, "nbchat": {"exported": exported, "answers": answers}}


#: marks the saved copy of a widget's conversation; widget.css hides the output holding it while the
#: widget itself is live (its CSS is loaded), so only kernel-less views (nbconvert, GitHub) show it
MIRROR_MARKER = '<div class="nbchat-mirror" hidden></div>'


#: the MIME type of the same copy as data, first in its output: nbchat's JupyterLab extension renders it with the
#: widget's own renderer (nothing while the live widget shows the conversation), so JupyterLab does not typeset the
#: Markdown after every turn; where the extension is not installed (nbconvert, GitHub) the Markdown shows
TRANSCRIPT_MIME = "application/vnd.nbchat.transcript+json"


def _mirror_title(conversation: Conversation) -> str:
    count = len(conversation)
    return f"ChatWidget conversation ({count} exchange{'' if count == 1 else 's'})"


def mirror_markdown(conversation: Conversation) -> str:
    """The static copy of a ``ChatWidget``'s conversation that the saved notebook keeps beside it."""
    return f"{MIRROR_MARKER}\n\n{conversation_markdown(conversation, title=_mirror_title(conversation))}"


def mirror_transcript(conversation: Conversation) -> dict[str, Any]:
    """The same copy as data (:data:`TRANSCRIPT_MIME`): the messages, each answer's status and provenance,
    and the provenance as the Markdown copy words it (``caption``)."""
    messages: list[dict[str, Any]] = []
    for exchange in conversation.exchanges:
        caption = describe(exchange.provenance) if exchange.provenance is not None else ""
        messages += [{"role": "user", "content": exchange.user},
                     {"role": "assistant", "content": exchange.answer, "status": exchange.status,
                      "provenance": exchange.provenance, "caption": caption}]
    return {"title": _mirror_title(conversation), "system": conversation.options.system or "", "messages": messages}


def write_export(conversation: Conversation, path: str | pathlib.Path) -> pathlib.Path:
    """Write ``path`` as Markdown (``.md``) or OpenAI messages (``.json``), chosen by its suffix."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    exported = utc_now()
    if suffix in (".md", ".markdown"):
        text = conversation_markdown(conversation, exported=exported)
    elif suffix == ".json":
        text = json.dumps(conversation_openai(conversation, exported=exported), ensure_ascii=False, indent=1) + "\n"
    else:
        raise ValueError(f"cannot export to {path.name!r}: name a .md (Markdown) or .json (OpenAI messages) file")
    path.write_text(text, encoding="utf-8")
    return path
