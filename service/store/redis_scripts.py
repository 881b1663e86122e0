"""The Lua scripts of the Redis store: each mutation is one script, so it is atomic in Redis.

Every script gets the key prefix as ARGV[1]. Keys under the prefix P:
  P seq            string   global change counter; INCR'd and PUBLISHed by every change
  P next_id        string   feature ids (INCR)
  P f:<id>         hash     title, description, status, created_at, up, down
  P fv:<id>        hash     voter -> +1/-1: the votes on one feature
  P v:<voter>      hash     feature id -> +1/-1: the votes of one voter (HLEN > 0: a voter)
  P totals         hash     features, up, down, voters
  P top, P top:<status>   sorted sets, every score 0, members ordered by bytes (BYLEX):
                          fixed-width sort key (down - up, -up, id) -> score desc, up desc, id asc
  P new, P new:<status>   the same with the key (-id,) -> id desc
  P idem:<len(owner)>:<owner>:<key>   hash title, description, id, created_at, expires (PEXPIRE'd)
  P changes        pub/sub channel carrying the new seq
Each component of a sort key is written as 16 decimal digits of (value + KEY_OFFSET), so the
byte order of members is the order of the keys (values are far inside +-KEY_OFFSET).
"""

from __future__ import annotations

from typing import Final

from ..schemas import CLOSED_STATUSES, Status

KEY_OFFSET: Final = 10**15
KEY_WIDTH: Final = 16
FEATURE_FIELDS: Final = ("title", "description", "status", "created_at", "up", "down")

_PRELUDE: Final = f"""
local P = ARGV[1]
local OFFSET = {KEY_OFFSET}
local CLOSED = {{{", ".join(f"['{s.value}'] = true" for s in sorted(CLOSED_STATUSES))}}}
local FIELDS = {{{", ".join(f"'{f}'" for f in FEATURE_FIELDS)}}}
local function enc(x) return string.format('%0{KEY_WIDTH}d', x + OFFSET) end
local function top_member(id, up, down) return enc(down - up) .. enc(-up) .. enc(id) end
local function new_member(id) return enc(-id) end
local function fkey(id) return P .. 'f:' .. string.format('%d', id) end
local function votes_key(id) return P .. 'fv:' .. string.format('%d', id) end
local function index(id, status, up, down)
  local t, n = top_member(id, up, down), new_member(id)
  redis.call('ZADD', P .. 'top', 0, t)
  redis.call('ZADD', P .. 'top:' .. status, 0, t)
  redis.call('ZADD', P .. 'new', 0, n)
  redis.call('ZADD', P .. 'new:' .. status, 0, n)
end
local function unindex(id, status, up, down)
  local t, n = top_member(id, up, down), new_member(id)
  redis.call('ZREM', P .. 'top', t)
  redis.call('ZREM', P .. 'top:' .. status, t)
  redis.call('ZREM', P .. 'new', n)
  redis.call('ZREM', P .. 'new:' .. status, n)
end
local function changed()
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('PUBLISH', P .. 'changes', seq)
  return seq
end
"""

# ARGV: prefix, idempotency key name or '', title, description, created_at, now, expires, ttl_ms
# -> {'created', id, seq} | {'replay', id, created_at} | {'conflict'}
CREATE: Final = (
    _PRELUDE
    + f"""
local idem = ARGV[2]
if idem ~= '' then
  local seen = redis.call('HMGET', idem, 'title', 'description', 'id', 'created_at', 'expires')
  if seen[3] and tonumber(seen[5]) > tonumber(ARGV[6]) then
    if seen[1] == ARGV[3] and seen[2] == ARGV[4] then return {{'replay', seen[3], seen[4]}} end
    return {{'conflict'}}
  end
end
local id = redis.call('INCR', P .. 'next_id')
local status = '{Status.OPEN.value}'
redis.call('HSET', fkey(id), 'title', ARGV[3], 'description', ARGV[4], 'status', status,
           'created_at', ARGV[5], 'up', 0, 'down', 0)
index(id, status, 0, 0)
redis.call('HINCRBY', P .. 'totals', 'features', 1)
if idem ~= '' then
  redis.call('DEL', idem)
  redis.call('HSET', idem, 'title', ARGV[3], 'description', ARGV[4], 'id', id,
             'created_at', ARGV[5], 'expires', ARGV[7])
  redis.call('PEXPIRE', idem, ARGV[8])
end
return {{'created', id, changed()}}
"""
)

# ARGV: prefix, id, then name/value pairs -> {'same' | seq, feature fields...} | {'notfound'}
UPDATE: Final = (
    _PRELUDE
    + """
local id = tonumber(ARGV[2])
local cur = redis.call('HMGET', fkey(id), unpack(FIELDS))
if not cur[1] then return {'notfound'} end
local now = {title = cur[1], description = cur[2], status = cur[3]}
local changes, new_status = {}, cur[3]
for i = 3, #ARGV, 2 do
  if now[ARGV[i]] ~= ARGV[i + 1] then
    changes[#changes + 1] = ARGV[i]
    changes[#changes + 1] = ARGV[i + 1]
    if ARGV[i] == 'status' then new_status = ARGV[i + 1] end
  end
end
if #changes == 0 then return {'same', unpack(cur)} end
if new_status ~= cur[3] then
  local up, down = tonumber(cur[5]), tonumber(cur[6])
  unindex(id, cur[3], up, down)
  index(id, new_status, up, down)
end
redis.call('HSET', fkey(id), unpack(changes))
local seq = changed()
return {seq, unpack(redis.call('HMGET', fkey(id), unpack(FIELDS)))}
"""
)

# ARGV: prefix, id -> {'deleted', seq} | {'notfound'}
DELETE: Final = (
    _PRELUDE
    + """
local id = tonumber(ARGV[2])
local cur = redis.call('HMGET', fkey(id), 'status', 'up', 'down')
if not cur[1] then return {'notfound'} end
local up, down = tonumber(cur[2]), tonumber(cur[3])
unindex(id, cur[1], up, down)
local votes = redis.call('HGETALL', votes_key(id))
local gone = 0
for i = 1, #votes, 2 do
  local mine = P .. 'v:' .. votes[i]
  redis.call('HDEL', mine, ARGV[2])
  if redis.call('EXISTS', mine) == 0 then gone = gone + 1 end
end
-- HINCRBY by a Lua -0 would send "-0": skip zero steps.
if up ~= 0 then redis.call('HINCRBY', P .. 'totals', 'up', -up) end
if down ~= 0 then redis.call('HINCRBY', P .. 'totals', 'down', -down) end
if gone ~= 0 then redis.call('HINCRBY', P .. 'totals', 'voters', -gone) end
redis.call('HINCRBY', P .. 'totals', 'features', -1)
redis.call('DEL', fkey(id), votes_key(id))
return {'deleted', changed()}
"""
)

# ARGV: prefix, voter, id, value (1, -1 or 0 to retract)
# -> {'ok', up, down, seq (0: nothing changed)} | {'notfound'} | {'closed', status}
VOTE: Final = (
    _PRELUDE
    + """
local voter, id, value = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = redis.call('HMGET', fkey(id), 'status', 'up', 'down')
if not cur[1] then return {'notfound'} end
if CLOSED[cur[1]] then return {'closed', cur[1]} end
local up, down = tonumber(cur[2]), tonumber(cur[3])
local old = tonumber(redis.call('HGET', votes_key(id), voter) or '0')
if old == value then return {'ok', up, down, 0} end
local d_up = (value > 0 and 1 or 0) - (old > 0 and 1 or 0)
local d_down = (value < 0 and 1 or 0) - (old < 0 and 1 or 0)
local before = top_member(id, up, down)
up, down = up + d_up, down + d_down
local after = top_member(id, up, down)
for _, ranking in ipairs({P .. 'top', P .. 'top:' .. cur[1]}) do
  redis.call('ZREM', ranking, before)
  redis.call('ZADD', ranking, 0, after)
end
redis.call('HSET', fkey(id), 'up', up, 'down', down)
local mine = P .. 'v:' .. voter
if value ~= 0 then
  redis.call('HSET', votes_key(id), voter, value)
  redis.call('HSET', mine, ARGV[3], value)
  if old == 0 and redis.call('HLEN', mine) == 1 then
    redis.call('HINCRBY', P .. 'totals', 'voters', 1)
  end
else
  redis.call('HDEL', votes_key(id), voter)
  redis.call('HDEL', mine, ARGV[3])
  if redis.call('EXISTS', mine) == 0 then redis.call('HINCRBY', P .. 'totals', 'voters', -1) end
end
if d_up ~= 0 then redis.call('HINCRBY', P .. 'totals', 'up', d_up) end
if d_down ~= 0 then redis.call('HINCRBY', P .. 'totals', 'down', d_down) end
return {'ok', up, down, changed()}
"""
)

# ARGV: prefix, ranking (e.g. 'top:open'), lex min ('-' or '(' .. member), count, 'top' | 'new'
# -> {id, feature fields..., id, feature fields...}
LIST: Final = (
    _PRELUDE
    + f"""
local out = {{}}
local members = redis.call('ZRANGE', P .. ARGV[2], ARGV[3], '+', 'BYLEX', 'LIMIT', 0, ARGV[4])
for _, m in ipairs(members) do
  local id
  if ARGV[5] == 'top' then id = tonumber(string.sub(m, {2 * KEY_WIDTH + 1})) - OFFSET
  else id = OFFSET - tonumber(m) end
  out[#out + 1] = id
  for _, v in ipairs(redis.call('HMGET', fkey(id), unpack(FIELDS))) do out[#out + 1] = v end
end
return out
"""
)

# ARGV: prefix, n -> {seq, features, up, down, voters, then the top n as in LIST}
STATS: Final = (
    _PRELUDE
    + f"""
local out = {{redis.call('GET', P .. 'seq') or '0'}}
for _, v in ipairs(redis.call('HMGET', P .. 'totals', 'features', 'up', 'down', 'voters')) do
  out[#out + 1] = v or '0'
end
for _, m in ipairs(redis.call('ZRANGE', P .. 'top', 0, tonumber(ARGV[2]) - 1)) do
  local id = tonumber(string.sub(m, {2 * KEY_WIDTH + 1})) - OFFSET
  out[#out + 1] = id
  for _, v in ipairs(redis.call('HMGET', fkey(id), unpack(FIELDS))) do out[#out + 1] = v end
end
return out
"""
)

# ARGV: prefix, floor -> the seq, raised past floor (and published) if it was below it:
# after Redis lost data, seq must still never go back.
RAISE_SEQ: Final = """
local P = ARGV[1]
local seq = tonumber(redis.call('GET', P .. 'seq') or '0')
local floor = tonumber(ARGV[2])
if seq >= floor then return seq end
redis.call('SET', P .. 'seq', floor + 1)
redis.call('PUBLISH', P .. 'changes', floor + 1)
return floor + 1
"""
