"""The shared store's keys and the fields of a turn's log entries, for the Python and the Lua side.

Keys (``nbchat:`` prefix; a turn's keys name its id in braces, a Redis Cluster *hash tag*, so that
they sit in one slot; the scripts that write many turns at once, and a turn's record with its uid,
still span slots, so a Cluster needs them split per shard)::

    turn:{id}          hash    uid, state (pending|running|ended), owner, request (JSON), interrupt
    turn:{id}:log      stream  a batch of chunks or the end (below)
    turn:{id}:readers  hash    process id -> streams attached in that process (for the grace period)
    uid:{uid}          string  the uid's current turn
    proc:{id}          string  the process's lease, renewed every lease/3 s
    user:{owner}:turns zset    a Hub user's turns held (or places reserved), by when admitted (ms)
    user:{owner}:begun zset    a Hub user's turns begun in the last minute, by when (ms)

A turn's log holds one entry per write of its owner, not one per chunk:

- a batch, id ``"{last seq}-0"``: ``seq`` (its first chunk's seq), ``c`` (the contents, a JSON array),
  ``t`` (the server times, a JSON array, absent when the server sends none), ``trimmed`` (``[seq, count]``:
  the chunk carrying the trimmed-history notice, when one of these does);
- the end, id ``"{seq}-0"`` (one past the last chunk): ``seq``, ``status``, ``code`` and ``message`` (an
  error), ``trimmed`` (the exchanges the backend dropped, when it dropped some).

The id is the batch's *last* seq, so a read after ``"{n}-0"`` starts at the entry that holds seq n + 1.
Entries travel to the scripts as flat argument slots (:meth:`Batch.args`, :func:`end_args`), which the
Lua functions of :data:`ENTRY_LUA` turn into fields; :func:`decode_entry` reads them back. The field
names are written here only.
"""

from __future__ import annotations

import json

from ...wire.events import Chunk, End, ErrorInfo, Event, Status

PREFIX = "nbchat:"
#: where an interrupt sent to any process is published (the owner cancels at once)
CHANNEL = PREFIX + "interrupt"
#: where a process reading a turn that generates elsewhere says so (the owner then writes it at once)
WATCH_CHANNEL = PREFIX + "watch"

SEQ, CONTENT, TIME, TRIMMED = "seq", "c", "t", "trimmed"
STATUS, CODE, MESSAGE = "status", "code", "message"

#: argument slots of one batch (after its kind and stream number): last, first, contents, times, notice
BATCH_SLOTS = 5
#: argument slots of one end (after its kind, stream, meta and readers numbers): seq, status, code,
#: message, trimmed
END_SLOTS = 5


def meta_key(turn_id: str) -> str:
    return f"{PREFIX}turn:{{{turn_id}}}"


def log_key(turn_id: str) -> str:
    return f"{PREFIX}turn:{{{turn_id}}}:log"


def readers_key(turn_id: str) -> str:
    return f"{PREFIX}turn:{{{turn_id}}}:readers"


def uid_key(uid: str) -> str:
    return f"{PREFIX}uid:{uid}"


def user_key(owner: str, what: str) -> str:
    """A Hub user's count across processes: ``turns`` held, ``begun`` in the last minute."""
    return f"{PREFIX}user:{{{owner}}}:{what}"


def lease_key(process: str) -> str:
    return f"{PREFIX}proc:{process}"


def turn_of(meta: str) -> str:
    """The turn id a record's key names (what an interrupt message carries)."""
    return meta.removeprefix(PREFIX + "turn:{").removesuffix("}")


#: JSON as short as it gets, UTF-8 left as it is (one encoder: json.dumps makes one per call with options)
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Batch:
    """A turn's consecutive chunks waiting to be one entry. It keeps their text and times, not the
    chunks: strings and floats are not tracked by the cyclic garbage collector, and a second's chunks
    of hundreds of turns, kept as objects, made its collections slower."""

    __slots__ = ("contents", "first", "notice", "times")

    def __init__(self, first: int) -> None:
        self.first = first
        self.contents: list[str] = []
        self.times: list[float | None] = []
        self.notice = ""

    def add(self, content: str, seq: int, server_time: float | None, trimmed: int = 0) -> None:
        """The next chunk's fields (``seq`` follows the last one added)."""
        self.contents.append(content)
        self.times.append(server_time)
        if trimmed:
            self.notice = json.dumps([seq, trimmed])

    def args(self) -> list[int | str]:
        """The entry's slots: ``[last, first, contents, times or "", notice or ""]`` (JSON encoded here,
        by C, once per entry: the script only places them)."""
        times = "" if self.times[0] is None else json.dumps(self.times)
        contents = _compact(self.contents)
        return [self.first + len(self.contents) - 1, self.first, contents, times, self.notice]


def end_args(end: End, seq: int) -> list[int | str]:
    """The end as one entry's slots: ``[seq, status, code, message, trimmed]`` ("" code: no error)."""
    code, message = (end.error.code, end.error.message) if end.error is not None else ("", "")
    return [seq, end.status.value, code, message, end.trimmed]


# batch_fields and end_fields: an entry's fields from its slots (ARGV strings); the scripts add the id.
ENTRY_LUA = f"""
local function batch_fields(first, contents, times, notice)
  local f = {{'{SEQ}', first, '{CONTENT}', contents}}
  if times ~= '' then f[#f + 1] = '{TIME}'; f[#f + 1] = times end
  if notice ~= '' then f[#f + 1] = '{TRIMMED}'; f[#f + 1] = notice end
  return f
end
local function end_fields(seq, status, code, message, trimmed)
  local f = {{'{SEQ}', seq, '{STATUS}', status}}
  if code ~= '' then f[#f + 1] = '{CODE}'; f[#f + 1] = code; f[#f + 1] = '{MESSAGE}'; f[#f + 1] = message end
  if trimmed ~= '' and trimmed ~= '0' then f[#f + 1] = '{TRIMMED}'; f[#f + 1] = trimmed end
  return f
end
"""


def decode_entry(fields: dict[str, str]) -> list[Event]:
    """An entry's events: a batch's chunks, or the end."""
    status = fields.get(STATUS)
    if status is not None:
        code = fields.get(CODE)
        error = ErrorInfo(code, fields.get(MESSAGE, "")) if code else None
        return [End(status=Status(status), error=error, trimmed=int(fields.get(TRIMMED, 0)))]
    first = int(fields[SEQ])
    contents: list[str] = json.loads(fields[CONTENT])
    times: list[float | None] = json.loads(fields[TIME]) if TIME in fields else [None] * len(contents)
    notice_seq, notice = json.loads(fields[TRIMMED]) if TRIMMED in fields else (0, 0)
    return [Chunk(content=c, seq=seq, server_time=t, trimmed=notice if seq == notice_seq else 0)
            for seq, (c, t) in enumerate(zip(contents, times, strict=True), first)]


def first_seq(fields: dict[str, str]) -> int:
    """The first seq an entry holds (an end holds its own)."""
    return int(fields[SEQ])


def is_end(fields: dict[str, str]) -> bool:
    return STATUS in fields


def entry_seq(entry_id: str) -> int:
    """The last seq an entry holds (its id)."""
    return int(entry_id.partition("-")[0])
