"""The shared store's keys and the fields of a turn's log entries, for the Python and the Lua side.

Keys (``nbchat:`` prefix)::

    turn:{id}          hash    uid, state (pending|running|ended), owner, request (JSON), interrupt
    turn:{id}:log      stream  entry "{seq}-0": a chunk {seq, c, t} or the end {seq, status, code, message}
    turn:{id}:readers  hash    process id -> streams attached in that process (for the grace period)
    uid:{uid}          string  the uid's current turn
    proc:{id}          string  the process's lease, renewed every lease/3 s

An entry travels from Python to the scripts as a JSON array (:func:`entry`), which the Lua function
:data:`ENTRY_LUA` turns into the stream entry's fields; :func:`decode_entry` reads them back. The
field names are written here only.
"""

from __future__ import annotations

from ...wire.events import Chunk, End, ErrorInfo, Event, Status

PREFIX = "nbchat:"
#: where an interrupt sent to any process is published (the owner cancels at once)
CHANNEL = PREFIX + "interrupt"

SEQ, CONTENT, TIME = "seq", "c", "t"
STATUS, CODE, MESSAGE = "status", "code", "message"


def meta_key(turn_id: str) -> str:
    return f"{PREFIX}turn:{turn_id}"


def log_key(turn_id: str) -> str:
    return f"{PREFIX}turn:{turn_id}:log"


def readers_key(turn_id: str) -> str:
    return f"{PREFIX}turn:{turn_id}:readers"


def uid_key(uid: str) -> str:
    return f"{PREFIX}uid:{uid}"


def lease_key(process: str) -> str:
    return f"{PREFIX}proc:{process}"


def turn_of(meta: str) -> str:
    """The turn id a record's key names (what an interrupt message carries)."""
    return meta.removeprefix(PREFIX + "turn:")


def entry(log: int, event: Event, seq: int) -> list[object]:
    """An event as the scripts take it, after the number of its stream's key (``log``):
    ``[log, seq, content, time or null]`` for a chunk, ``[log, seq, status, code, message]`` for the
    end (``seq`` is its own slot; "" code: no error). One flat list: this runs for every chunk."""
    if type(event) is Chunk:
        return [log, event.seq, event.content, event.server_time]
    assert isinstance(event, End)
    code, message = (event.error.code, event.error.message) if event.error is not None else ("", "")
    return [log, seq, event.status.value, code, message]


# entry_fields(e): the stream entry's id and its fields (after the id) for a list made by entry();
# a chunk's has 4 items, an end's 5 and more (the append script adds the keys it ends after them).
ENTRY_LUA = f"""
local function entry_fields(e)
  local id = string.format('%d', e[2])
  if #e == 4 then
    if e[4] == cjson.null then return id, {{'{SEQ}', id, '{CONTENT}', e[3]}} end
    return id, {{'{SEQ}', id, '{CONTENT}', e[3], '{TIME}', string.format('%.17g', e[4])}}
  end
  if e[4] == '' then return id, {{'{SEQ}', id, '{STATUS}', e[3]}} end
  return id, {{'{SEQ}', id, '{STATUS}', e[3], '{CODE}', e[4], '{MESSAGE}', e[5]}}
end
"""


def decode_entry(fields: dict[str, str]) -> Event:
    status = fields.get(STATUS)
    if status is None:
        ts = fields.get(TIME)
        return Chunk(content=fields.get(CONTENT, ""), seq=int(fields[SEQ]), server_time=float(ts) if ts else None)
    code = fields.get(CODE)
    error = ErrorInfo(code, fields.get(MESSAGE, "")) if code else None
    return End(status=Status(status), error=error)


def is_end(fields: dict[str, str]) -> bool:
    return STATUS in fields


def entry_seq(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])
