"""The shared store's Lua scripts: each change to a turn's keys that must happen at once, in one command.

Every script that writes an entry builds its fields with :data:`~.schema.ENTRY_LUA`, and every key it
writes gets its expiry in the same script: a key written by a process that is killed before its first
heartbeat must not outlive it (the heartbeat only extends it).
"""

from __future__ import annotations

from redis.asyncio import Redis

from .schema import BATCH_SLOTS, END_SLOTS, ENTRY_LUA, PREFIX

# End a turn unless it already ended: its end entry after the last one, its record marked ended
# (KEYS: meta, log; ARGV: status, code, message, ttl). Shared by the interrupt of a queued turn, by a
# reader that found the owner's lease gone, and by a process that claimed a turn it cannot run.
_END = """
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local seq = 1
if #last > 0 then seq = tonumber(string.match(last[1][1], '^(%d+)')) + 1 end
redis.call('XADD', KEYS[2], seq .. '-0', unpack(end_fields(tostring(seq), ARGV[1], ARGV[2], ARGV[3], '')))
redis.call('HSET', KEYS[1], 'state', 'ended')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
"""

END_SCRIPT = ENTRY_LUA + _END

# Write the events of many turns in one command with one reply: per turn, one entry for its new chunks
# (schema.batch_args) and, once it ended, one for its end (schema.end_args). The Python client's cost is
# per command, per reply and per argument, and Redis's per entry: one XADD per chunk spent more CPU on
# them than on the chunk. KEYS: the streams, metas and reader hashes the entries name; ARGV: maxlen, ttl,
# then the entries, each "b", stream number, then its BATCH_SLOTS; or "e", stream, meta and readers
# numbers, then its END_SLOTS. A turn whose entry fails (out of memory, say) does not stop the others:
# returns the failed streams' numbers.
APPEND_SCRIPT = ENTRY_LUA + f"""
local maxlen, ttl, failed, i = ARGV[1], ARGV[2], {{}}, 3
while i <= #ARGV do
  local n, ok = ARGV[i + 1], nil
  local log = KEYS[tonumber(n)]
  if ARGV[i] == 'b' then
    ok = redis.pcall('XADD', log, 'MAXLEN', '~', maxlen, ARGV[i + 2] .. '-0',
                     unpack(batch_fields(ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])))
    redis.call('EXPIRE', log, ttl)
    i = i + 2 + {BATCH_SLOTS}
  else
    local meta, readers = KEYS[tonumber(ARGV[i + 2])], KEYS[tonumber(ARGV[i + 3])]
    ok = redis.pcall('XADD', log, ARGV[i + 4] .. '-0',
                     unpack(end_fields(ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8])))
    redis.call('HSET', meta, 'state', 'ended')
    for _, key in ipairs({{meta, log, readers}}) do redis.call('EXPIRE', key, ttl) end
    i = i + 4 + {END_SLOTS}
  end
  if type(ok) == 'table' and ok.err then failed[#failed + 1] = n end
end
return failed
"""

# The heartbeat's look at the turns generating in this process, in one command: their keys kept alive,
# and the turns that need a look: record gone, interrupt pending, or streams counted on some process.
# KEYS: meta, log, readers of each turn; ARGV: ttl. Returns {turn number (from 1), state or "",
# interrupt or "", {process, count, ...}} for those only (the reply is read per turn: most have nothing).
CHECK_SCRIPT = """
local out = {}
for i = 1, #KEYS, 3 do
  local found = redis.call('HMGET', KEYS[i], 'state', 'interrupt')
  local readers = redis.call('HGETALL', KEYS[i + 2])
  for j = 0, 2 do redis.call('EXPIRE', KEYS[i + j], ARGV[1]) end
  if not found[1] or found[2] or #readers > 0 then
    out[#out + 1] = {(i + 2) / 3, found[1] or '', found[2] or '', readers}
  end
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

# A new turn's record and its expiry, and the uid's current turn, at once (or none of it), in one round
# trip. KEYS: meta, and the uid's key when the turn has a uid; ARGV: uid, state, owner, request, ttl,
# the uid key's ttl, turn id. Returns the uid's previous turn ('' when none).
CREATE_SCRIPT = """
redis.call('HSET', KEYS[1], 'uid', ARGV[1], 'state', ARGV[2], 'owner', ARGV[3], 'request', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if #KEYS < 2 then return '' end
local previous = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], ARGV[7], 'EX', ARGV[6])
return previous or ''
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

# One Hub user's bounds across every process (--max-user-turns, --user-turns-per-minute), checked and counted at
# once. KEYS: the user's turns (member -> when admitted, ms), the user's turns begun in the last minute; ARGV: the
# bound at once and per minute (0: none), the new member (a reservation "r:..." until the turn is made), the
# turns key's ttl, the grace of a reservation (ms), then the ids this process saw end (their end may not be
# written yet). A member counts while its record is pending, or running on a process whose lease is alive (a
# killed process's turns stop counting when its lease runs out), a reservation while young; the others are
# dropped. Returns {} when admitted (the member counted), {'turns', counted ids...} or {'rate', count, ms to wait}.
# It reads the records and leases of the turns it holds, keys it cannot name in KEYS before it runs: like the
# batched write, it needs one Redis primary, not a Cluster (docs/deployment.md).
USER_TURNS_SCRIPT = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 6, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
local held, live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'), {{'turns'}}
for i = 1, #held, 2 do
  local id, counts = held[i], false
  if string.sub(id, 1, 2) == 'r:' then
    counts = now - tonumber(held[i + 1]) < tonumber(ARGV[5])
  else
    local found = redis.call('HMGET', '{PREFIX}turn:{{' .. id .. '}}', 'state', 'owner')
    counts = found[1] == 'pending' or
             (found[1] == 'running' and redis.call('EXISTS', '{PREFIX}proc:' .. (found[2] or '')) == 1)
  end
  if counts then live[#live + 1] = id else redis.call('ZREM', KEYS[1], id) end
end
if ARGV[1] ~= '0' and #live - 1 >= tonumber(ARGV[1]) then return live end
if ARGV[2] ~= '0' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
  local begun = redis.call('ZCARD', KEYS[2])
  if begun >= tonumber(ARGV[2]) then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {{'rate', begun, tonumber(first[2]) + 60000 - now}}
  end
  redis.call('ZADD', KEYS[2], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], 60000)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {{}}
"""


class Scripts:
    """The scripts registered on one client (each is sent once, then called by its hash)."""

    def __init__(self, client: Redis) -> None:
        self.create = client.register_script(CREATE_SCRIPT)
        self.append = client.register_script(APPEND_SCRIPT)
        self.end = client.register_script(END_SCRIPT)
        self.check = client.register_script(CHECK_SCRIPT)
        self.interrupt = client.register_script(INTERRUPT_SCRIPT)
        self.abandon = client.register_script(ABANDON_SCRIPT)
        self.claim = client.register_script(CLAIM_SCRIPT)
        self.user_turns = client.register_script(USER_TURNS_SCRIPT)

