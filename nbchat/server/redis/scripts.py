"""The shared store's Lua scripts: each change to a turn's keys that must happen at once, in one command.

Every script that writes an entry builds its fields with :data:`~.schema.ENTRY_LUA`, and every key it
writes gets its expiry in the same script: a key written by a process that is killed before its first
heartbeat must not outlive it (the heartbeat only extends it).
"""

from __future__ import annotations

from redis.asyncio import Redis

from .schema import ENTRY_LUA

# End a turn unless it already ended: its end entry after the last one, its record marked ended
# (KEYS: meta, log; ARGV: status, code, message, ttl). Shared by the interrupt of a queued turn, by a
# reader that found the owner's lease gone, and by a process that claimed a turn it cannot run.
_END = """
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local seq = 1
if #last > 0 then seq = tonumber(string.match(last[1][1], '^(%d+)')) + 1 end
local id, fields = entry_fields({0, seq, ARGV[1], ARGV[2], ARGV[3]})
redis.call('XADD', KEYS[2], id .. '-0', unpack(fields))
redis.call('HSET', KEYS[1], 'state', 'ended')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
"""

END_SCRIPT = ENTRY_LUA + _END

# Append a batch of events to the turns' streams in one command with one reply, its entries in one
# JSON argument: the Python client's cost is per command, per reply and per argument, and one XADD per
# chunk spent more CPU on them than on the chunk. KEYS: the streams, metas and reader hashes the
# entries name; ARGV: maxlen, ttl, then a JSON array of entries as schema.entry makes them, each naming
# its stream by number, an end's followed by its meta's and reader hash's numbers.
# A turn whose entry fails (out of memory, say) does not stop the others: returns the failed logs' numbers.
APPEND_SCRIPT = ENTRY_LUA + """
local maxlen, ttl, failed, timed = ARGV[1], ARGV[2], {}, {}
for _, e in ipairs(cjson.decode(ARGV[3])) do
  local log = KEYS[e[1]]
  local id, fields = entry_fields(e)
  local ok = redis.pcall('XADD', log, 'MAXLEN', '~', maxlen, id .. '-0', unpack(fields))
  if not timed[log] then
    redis.call('EXPIRE', log, ttl)
    timed[log] = true
  end
  if #e > 4 then
    redis.call('HSET', KEYS[e[6]], 'state', 'ended')
    for _, key in ipairs({KEYS[e[6]], log, KEYS[e[7]]}) do redis.call('EXPIRE', key, ttl) end
  end
  if type(ok) == 'table' and ok.err then failed[#failed + 1] = e[1] end
end
return failed
"""

# The heartbeat's look at the turns generating in this process, in one command: each turn's state,
# pending interrupt and attached readers, and its keys kept alive. KEYS: meta, log, readers of each
# turn; ARGV: ttl. Returns {state or "", interrupt or "", {process, count, ...}} per turn.
CHECK_SCRIPT = """
local out = {}
for i = 1, #KEYS, 3 do
  local found = redis.call('HMGET', KEYS[i], 'state', 'interrupt')
  local readers = redis.call('HGETALL', KEYS[i + 2])
  for j = 0, 2 do redis.call('EXPIRE', KEYS[i + j], ARGV[1]) end
  out[#out + 1] = {found[1] or '', found[2] or '', readers}
end
return out
"""

# KEYS: meta, log; ARGV: status, code, message, ttl, channel. Returns {state, uid}.
INTERRUPT_SCRIPT = ENTRY_LUA + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {} end
local uid = redis.call('HGET', KEYS[1], 'uid') or ''
if state == 'pending' then
""" + _END + """
  return {'ended', uid}
elseif state == 'running' then
  redis.call('HSET', KEYS[1], 'interrupt', ARGV[1])
  redis.call('PUBLISH', ARGV[5], KEYS[1])
end
return {state, uid}
"""

# KEYS: meta, log, the owner's lease; ARGV: status, code, message, ttl, owner. 1 when it ended the turn.
ABANDON_SCRIPT = ENTRY_LUA + """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[5] then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
""" + _END + """
return 1
"""

# KEYS: meta; ARGV: this process. Returns {'claimed', request, uid} or {state}.
CLAIM_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1])
  return {'claimed', redis.call('HGET', KEYS[1], 'request'), redis.call('HGET', KEYS[1], 'uid') or ''}
end
return {state or 'gone'}
"""


class Scripts:
    """The scripts registered on one client (each is sent once, then called by its hash)."""

    def __init__(self, client: Redis) -> None:
        self.append = client.register_script(APPEND_SCRIPT)
        self.end = client.register_script(END_SCRIPT)
        self.check = client.register_script(CHECK_SCRIPT)
        self.interrupt = client.register_script(INTERRUPT_SCRIPT)
        self.abandon = client.register_script(ABANDON_SCRIPT)
        self.claim = client.register_script(CLAIM_SCRIPT)

