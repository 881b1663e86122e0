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
  P wilson, P wilson:<status>, P controversial, P controversial:<status>
                          the same with the keys of base.sort_key (computed here in Lua with the
                          same IEEE double arithmetic as in Python; see ADR-007)
  P new, P new:<status>   the same with the key (-id,) -> id desc
  P layout         string '2' once the wilson/controversial sets exist for every feature (MIGRATE)
  P idem:<len(owner)>:<owner>:<key>   hash title, description, id, created_at, expires (PEXPIRE'd)
  P board          hash title, round, voting_open ('1'/'0'), results_hidden ('1'/'0');
                   a missing field is its default (DEFAULT_BOARD), so a new board needs no setup
  P rounds         hash round -> JSON [round, title, closed_at, total_votes, voters, hidden]
  P round:<n>      string: JSON list of the round's final standings, rows as in FEATURE_ROW
  P changes        pub/sub channel carrying the new seq
  P touched        string: Unix seconds of the last change (board_idle_ttl)
  P epoch          string: the identity of the board's data (made by STATS when missing)
  P gone           string '1' once the board is deleted: every mutation then answers 'noboard'
where P is the board's prefix, `<redis_prefix>{b:<slug>}:` (ADR-012): the hash tag puts every
key of one board in one Redis Cluster slot, so every script below touches one slot. The board
directory (store/redis.py, RedisBoards) keeps its own keys under `<redis_prefix>{boards}:`.
Each component of a sort key is written as 16 decimal digits of (value + KEY_OFFSET), so the
byte order of members is the order of the keys (values are far inside +-KEY_OFFSET).
"""

from __future__ import annotations

from typing import Final

from ..schemas import CLOSED_STATUSES, EXCERPT_MAX, Status
from .base import CONTROVERSY_SCALE, WILSON_SCALE, WILSON_Z

KEY_OFFSET: Final = 10**15
KEY_WIDTH: Final = 16
FEATURE_FIELDS: Final = ("title", "description", "status", "created_at", "up", "down")
RANKED: Final = ("top", "wilson", "controversial")  # the orders that move with votes
LAYOUT: Final = "2"
# STATS sends at most this many bytes of a description (UTF-8, at most 4 bytes a character): a
# longer one still has more than EXCERPT_MAX characters, so Python cuts and marks it
# (visibility.on_board).
EXCERPT_BYTES: Final = 4 * EXCERPT_MAX + 4

_PRELUDE: Final = f"""
local P = ARGV[1]
local OFFSET = {KEY_OFFSET}
local CLOSED = {{{", ".join(f"['{s.value}'] = true" for s in sorted(CLOSED_STATUSES))}}}
local FIELDS = {{{", ".join(f"'{f}'" for f in FEATURE_FIELDS)}}}
local function enc(x) return string.format('%0{KEY_WIDTH}d', x + OFFSET) end
local RANKED = {{{", ".join(f"'{r}'" for r in RANKED)}}}
local Z = {WILSON_Z!r}
-- base.scaled, base.wilson_lower_bound and base.controversy, operation for operation
local function scaled(x, scale) return math.floor(x * scale + 0.5) end
local function wilson(up, down)
  local n = up + down
  if n <= 0 then return 0 end
  local z2 = Z * Z
  local p = up / n
  local spread = Z * math.sqrt((p * (1 - p) + z2 / (4 * n)) / n)
  return math.max(0, (p + z2 / (2 * n) - spread) / (1 + z2 / n))
end
local function controversy(up, down)
  if up <= 0 or down <= 0 then return 0 end
  return (up + down) ^ (math.min(up, down) / math.max(up, down))
end
local function member(kind, id, up, down)
  if kind == 'top' then return enc(down - up) .. enc(-up) .. enc(id) end
  if kind == 'wilson' then
    local unvoted = (up + down == 0) and 1 or 0
    return enc(unvoted) .. enc(-scaled(wilson(up, down), {WILSON_SCALE})) .. enc(id)
  end
  return enc(-scaled(controversy(up, down), {CONTROVERSY_SCALE})) .. enc(-(up + down)) .. enc(id)
end
local function new_member(id) return enc(-id) end
local function fkey(id) return P .. 'f:' .. string.format('%d', id) end
local function votes_key(id) return P .. 'fv:' .. string.format('%d', id) end
local function index(id, status, up, down)
  for _, kind in ipairs(RANKED) do
    local m = member(kind, id, up, down)
    redis.call('ZADD', P .. kind, 0, m)
    redis.call('ZADD', P .. kind .. ':' .. status, 0, m)
  end
  local n = new_member(id)
  redis.call('ZADD', P .. 'new', 0, n)
  redis.call('ZADD', P .. 'new:' .. status, 0, n)
end
local function unindex(id, status, up, down)
  for _, kind in ipairs(RANKED) do
    local m = member(kind, id, up, down)
    redis.call('ZREM', P .. kind, m)
    redis.call('ZREM', P .. kind .. ':' .. status, m)
  end
  local n = new_member(id)
  redis.call('ZREM', P .. 'new', n)
  redis.call('ZREM', P .. 'new:' .. status, n)
end
-- a vote: one member moves in each ranked order, for all features and for its status
local function rerank(id, status, up, down, new_up, new_down)
  for _, kind in ipairs(RANKED) do
    local before, after = member(kind, id, up, down), member(kind, id, new_up, new_down)
    for _, ranking in ipairs({{P .. kind, P .. kind .. ':' .. status}}) do
      redis.call('ZREM', ranking, before)
      redis.call('ZADD', ranking, 0, after)
    end
  end
end
local function changed()
  redis.call('SET', P .. 'touched', redis.call('TIME')[1])
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('PUBLISH', P .. 'changes', seq)
  return seq
end
local function hidden_flag()
  return redis.call('HGET', P .. 'board', 'results_hidden') == '1' and 1 or 0
end
local function append_feature(out, id)
  out[#out + 1] = id
  for _, v in ipairs(redis.call('HMGET', fkey(id), unpack(FIELDS))) do out[#out + 1] = v end
end
-- the first n bytes of s or fewer, never ending inside a UTF-8 sequence
local function head(s, n)
  if #s <= n then return s end
  local b = string.byte(s, n + 1)
  while n > 0 and b >= 128 and b < 192 do
    n = n - 1
    b = string.byte(s, n + 1)
  end
  return string.sub(s, 1, n)
end
-- append_feature for stats: the description cut to what a board shows
local function append_summary(out, id)
  out[#out + 1] = id
  local f = redis.call('HMGET', fkey(id), unpack(FIELDS))
  f[2] = head(f[2], {EXCERPT_BYTES})
  for i = 1, #FIELDS do out[#out + 1] = f[i] end
end
-- a deleted board (its directory entry gone) keeps a `gone` key: no change applies to it
local function gone() return redis.call('EXISTS', P .. 'gone') == 1 end
local function top_id(m) return tonumber(string.sub(m, {2 * KEY_WIDTH + 1})) - OFFSET end
local function new_id(m) return OFFSET - tonumber(m) end
"""

# ARGV: prefix, idempotency key name or '', title, description, created_at, now, expires, ttl_ms,
#       max_features
# -> {'created', id, seq, hidden} | {'replay', id, created_at, hidden} | {'conflict'} | {'full'}
# The bound is read in the same script as the insert: concurrent creates on any number of
# instances never take the board past max_features (a replay of an earlier create still works).
CREATE: Final = (
    _PRELUDE
    + f"""
if gone() then return {{'noboard'}} end
local idem = ARGV[2]
if idem ~= '' then
  local seen = redis.call('HMGET', idem, 'title', 'description', 'id', 'created_at', 'expires')
  if seen[3] and tonumber(seen[5]) > tonumber(ARGV[6]) then
    if seen[1] == ARGV[3] and seen[2] == ARGV[4] then
      return {{'replay', seen[3], seen[4], hidden_flag()}}
    end
    return {{'conflict'}}
  end
end
if tonumber(redis.call('HGET', P .. 'totals', 'features') or '0') >= tonumber(ARGV[9]) then
  return {{'full'}}
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
return {{'created', id, changed(), hidden_flag()}}
"""
)

# ARGV: prefix, id, then name/value pairs -> {'same' | seq, feature fields...} | {'notfound'}
UPDATE: Final = (
    _PRELUDE
    + """
if gone() then return {'noboard'} end
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
if gone() then return {'noboard'} end
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
# -> {'ok', up, down, seq (0: nothing changed), hidden} | {'notfound'} | {'locked'}
#    | {'closed', status}
# The board's lock is read here, in the same script: a vote racing PATCH /board is either
# counted before the lock or refused, never counted after it.
VOTE: Final = (
    _PRELUDE
    + """
if gone() then return {'noboard'} end
local voter, id, value = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = redis.call('HMGET', fkey(id), 'status', 'up', 'down')
if not cur[1] then return {'notfound'} end
local board = redis.call('HMGET', P .. 'board', 'voting_open', 'results_hidden')
if board[1] == '0' then return {'locked'} end
local hidden = board[2] == '1' and 1 or 0
if CLOSED[cur[1]] then return {'closed', cur[1]} end
local up, down = tonumber(cur[2]), tonumber(cur[3])
local old = tonumber(redis.call('HGET', votes_key(id), voter) or '0')
if old == value then return {'ok', up, down, 0, hidden} end
local d_up = (value > 0 and 1 or 0) - (old > 0 and 1 or 0)
local d_down = (value < 0 and 1 or 0) - (old < 0 and 1 or 0)
rerank(id, cur[1], up, down, up + d_up, down + d_down)
up, down = up + d_up, down + d_down
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
return {'ok', up, down, changed(), hidden}
"""
)

# ARGV: prefix, ranking (e.g. 'wilson:open'), lex min ('-' or '(' .. member), count, the sort
#       ('top', 'wilson', 'controversial' or 'new'), public ('1' | '0'), the id ranking of the
#       scope (e.g. 'new:open'), its lex max ('+' or '(' .. member)
# -> {hidden, by_id, member, id, feature fields..., member, id, feature fields...}
# A public reader of a ranked listing while results are hidden gets it by id ascending instead
# (by_id = 1; members then are those of 'new'), decided in the same script as the read.
LIST: Final = (
    _PRELUDE
    + """
local hidden = hidden_flag()
local out = {hidden, 0}
local members
if hidden == 1 and ARGV[6] == '1' and ARGV[5] ~= 'new' then
  out[2] = 1
  members = redis.call('ZRANGE', P .. ARGV[7], ARGV[8], '-', 'BYLEX', 'REV', 'LIMIT', 0, ARGV[4])
  for _, m in ipairs(members) do
    out[#out + 1] = m
    append_feature(out, new_id(m))
  end
  return out
end
members = redis.call('ZRANGE', P .. ARGV[2], ARGV[3], '+', 'BYLEX', 'LIMIT', 0, ARGV[4])
for _, m in ipairs(members) do
  out[#out + 1] = m
  if ARGV[5] == 'new' then append_feature(out, new_id(m)) else append_feature(out, top_id(m)) end
end
return out
"""
)

# ARGV: prefix, id -> {hidden, title, description, status, created_at, up, down}
#       (title false: no such feature)
GET: Final = (
    _PRELUDE
    + """
local out = {hidden_flag()}
for _, v in ipairs(redis.call('HMGET', fkey(tonumber(ARGV[2])), unpack(FIELDS))) do
  out[#out + 1] = v
end
return out
"""
)

# ARGV: prefix -> 1 when it (re)built the wilson/controversial sets, 0 when they were there.
# Boards stored before those orders existed get them once, at the next start (ADR-007).
MIGRATE: Final = (
    _PRELUDE
    + f"""
if redis.call('GET', P .. 'layout') == '{LAYOUT}' then return 0 end
for _, m in ipairs(redis.call('ZRANGE', P .. 'new', 0, -1)) do
  local id = new_id(m)
  local f = redis.call('HMGET', fkey(id), 'status', 'up', 'down')
  if f[1] then
    local up, down = tonumber(f[2]), tonumber(f[3])
    for _, kind in ipairs({{'wilson', 'controversial'}}) do
      local ranked = member(kind, id, up, down)
      redis.call('ZADD', P .. kind, 0, ranked)
      redis.call('ZADD', P .. kind .. ':' .. f[1], 0, ranked)
    end
  end
end
redis.call('SET', P .. 'layout', '{LAYOUT}')
return 1
"""
)

# ARGV: prefix, n, a new epoch -> {epoch, seq, features, up, down, voters, the board (title,
# round, voting_open, results_hidden: false when unset), count, then the top n as in LIST,
# then, while results are hidden, the first n by id ascending (the public's top); descriptions
# at most EXCERPT_BYTES}. The board's epoch is made here when it has none: at its first stats,
# and again after Redis lost the board's data (the epoch key went with it).
STATS: Final = (
    _PRELUDE
    + """
local epoch = redis.call('GET', P .. 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', P .. 'epoch', epoch)
end
local out = {epoch, redis.call('GET', P .. 'seq') or '0'}
for _, v in ipairs(redis.call('HMGET', P .. 'totals', 'features', 'up', 'down', 'voters')) do
  out[#out + 1] = v or '0'
end
local board = redis.call('HMGET', P .. 'board', 'title', 'round', 'voting_open', 'results_hidden')
for i = 1, 4 do out[#out + 1] = board[i] end
local top = redis.call('ZRANGE', P .. 'top', 0, tonumber(ARGV[2]) - 1)
out[#out + 1] = #top
for _, m in ipairs(top) do append_summary(out, top_id(m)) end
if board[4] == '1' then
  local first = redis.call('ZRANGE', P .. 'new', 0, tonumber(ARGV[2]) - 1, 'REV')
  for _, m in ipairs(first) do append_summary(out, new_id(m)) end
end
return out
"""
)

# ARGV: prefix, default title, then name/value pairs (voting_open/results_hidden as '1'/'0')
# -> {'same' | seq, title, round, voting_open, results_hidden}
UPDATE_BOARD: Final = (
    _PRELUDE
    + """
if gone() then return {'noboard'} end
local key = P .. 'board'
local cur = redis.call('HMGET', key, 'title', 'round', 'voting_open', 'results_hidden')
local now = {title = cur[1] or ARGV[2], round = cur[2] or '1', voting_open = cur[3] or '1',
             results_hidden = cur[4] or '0'}
local changes = {}
for i = 3, #ARGV, 2 do
  if now[ARGV[i]] ~= ARGV[i + 1] then
    changes[#changes + 1] = ARGV[i]
    changes[#changes + 1] = ARGV[i + 1]
    now[ARGV[i]] = ARGV[i + 1]
  end
end
local head = 'same'
if #changes > 0 then
  redis.call('HSET', key, unpack(changes))
  head = changed()
end
return {head, now.title, now.round, now.voting_open, now.results_hidden}
"""
)

# ARGV: prefix, closed_at, default title
# -> {seq, title, round, voting_open, results_hidden} (the board of the new round)
# Archives every feature in top order with its counts, deletes every vote (O(votes), like
# DELETE) and starts the next round, in one step: no vote lands between archive and clear.
RESET: Final = (
    _PRELUDE
    + """
if gone() then return {'noboard'} end
local key = P .. 'board'
local board = redis.call('HMGET', key, 'title', 'round', 'voting_open', 'results_hidden')
local title, round = board[1] or ARGV[3], tonumber(board[2] or '1')
local totals = redis.call('HMGET', P .. 'totals', 'up', 'down', 'voters')
local total_votes = tonumber(totals[1] or '0') + tonumber(totals[2] or '0')
local rows = {}
for _, m in ipairs(redis.call('ZRANGE', P .. 'top', 0, -1)) do
  local id = top_id(m)
  local f = redis.call('HMGET', fkey(id), unpack(FIELDS))
  rows[#rows + 1] = {tostring(id), f[1], f[2], f[3], f[4], f[5], f[6]}
  for _, voter in ipairs(redis.call('HKEYS', votes_key(id))) do
    redis.call('DEL', P .. 'v:' .. voter)
  end
  redis.call('DEL', votes_key(id))
  local up, down = tonumber(f[5]), tonumber(f[6])
  if up ~= 0 or down ~= 0 then
    unindex(id, f[3], up, down)
    index(id, f[3], 0, 0)
    redis.call('HSET', fkey(id), 'up', 0, 'down', 0)
  end
end
local summary = {tostring(round), title, ARGV[2], tostring(total_votes), totals[3] or '0',
                 board[4] == '1'}
redis.call('HSET', P .. 'rounds', round, cjson.encode(summary))
redis.call('SET', P .. 'round:' .. round, #rows > 0 and cjson.encode(rows) or '[]')
redis.call('HSET', P .. 'totals', 'up', 0, 'down', 0, 'voters', 0)
redis.call('HSET', key, 'round', round + 1)
return {changed(), title, tostring(round + 1), board[3] or '1', board[4] or '0'}
"""
)

# ARGV: prefix, round ('' for the current one)
# -> {'current', title, round, voting_open, results_hidden, up, down, voters, then every
#     feature in top order as in LIST} | {'archived', summary JSON, standings JSON} | {'notfound'}
STANDINGS: Final = (
    _PRELUDE
    + """
local board = redis.call('HMGET', P .. 'board', 'title', 'round', 'voting_open', 'results_hidden')
local current = board[2] or '1'
if ARGV[2] == '' or ARGV[2] == current then
  local out = {'current', board[1], current, board[3], board[4]}
  for _, v in ipairs(redis.call('HMGET', P .. 'totals', 'up', 'down', 'voters')) do
    out[#out + 1] = v or '0'
  end
  for _, m in ipairs(redis.call('ZRANGE', P .. 'top', 0, -1)) do append_feature(out, top_id(m)) end
  return out
end
local summary = redis.call('HGET', P .. 'rounds', ARGV[2])
if not summary then return {'notfound'} end
return {'archived', summary, redis.call('GET', P .. 'round:' .. ARGV[2])}
"""
)

# ARGV: prefix, floor -> the seq, raised past floor (and published) if it was below it:
# after Redis lost data, seq must still never go back.
RAISE_SEQ: Final = """
local P = ARGV[1]
local seq = tonumber(redis.call('GET', P .. 'seq') or '0')
if redis.call('EXISTS', P .. 'gone') == 1 then return {seq, 0} end  -- deleted: its keys go
local floor = tonumber(ARGV[2])
if seq >= floor then return {seq, 0} end
redis.call('SET', P .. 'seq', floor + 1)
redis.call('PUBLISH', P .. 'changes', floor + 1)
return {floor + 1, 1}
"""


# ARGV: prefix, title -> 1. A new board: its title, and the current layout (nothing to migrate).
INIT_BOARD: Final = f"""
local P = ARGV[1]
redis.call('HSET', P .. 'board', 'title', ARGV[2])
redis.call('SET', P .. 'layout', '{LAYOUT}')
redis.call('SET', P .. 'touched', redis.call('TIME')[1])
return 1
"""

# ARGV: prefix, grace seconds -> the seq. The board is deleted: mark it so no change applies,
# and bump its seq so its watchers look again.
MARK_GONE: Final = """
local P = ARGV[1]
redis.call('SET', P .. 'gone', '1', 'EX', ARGV[2])
local seq = redis.call('INCR', P .. 'seq')
redis.call('PUBLISH', P .. 'changes', seq)
return seq
"""

# The board directory, keys under D = <redis_prefix>{boards}: (one slot):
#   D all      sorted set, every score 0: "<created ms, 15 digits>:<slug>" (the order made)
#   D info     hash slug -> JSON [join code, created_at, member of D all]
#   D codes    hash join code -> slug (unique among live boards)
#   D touched  sorted set slug -> Unix seconds of its last change known here (board_idle_ttl)
# ARGV: D, slug, code, created_at, created ms, max boards, now
# -> 'ok' | 'full' | 'taken' (the code belongs to another board: pick another)
REGISTER_BOARD: Final = """
local D = ARGV[1]
if redis.call('HEXISTS', D .. 'info', ARGV[2]) == 1 then return 'ok' end
if ARGV[2] ~= 'main' and redis.call('ZCARD', D .. 'all') >= tonumber(ARGV[6]) then return 'full' end
if redis.call('HSETNX', D .. 'codes', ARGV[3], ARGV[2]) == 0 then return 'taken' end
local member = string.format('%015d', tonumber(ARGV[5])) .. ':' .. ARGV[2]
redis.call('HSET', D .. 'info', ARGV[2], cjson.encode({ARGV[3], ARGV[4], member}))
redis.call('ZADD', D .. 'all', 0, member)
redis.call('ZADD', D .. 'touched', ARGV[7], ARGV[2])
return 'ok'
"""

# ARGV: D, slug, deletion channel -> 1 | 0 (no such board). Publishes the slug on the channel.
UNREGISTER_BOARD: Final = """
local D = ARGV[1]
local raw = redis.call('HGET', D .. 'info', ARGV[2])
if not raw then return 0 end
local info = cjson.decode(raw)
if redis.call('HGET', D .. 'codes', info[1]) == ARGV[2] then
  redis.call('HDEL', D .. 'codes', info[1])
end
redis.call('HDEL', D .. 'info', ARGV[2])
redis.call('ZREM', D .. 'all', info[3])
redis.call('ZREM', D .. 'touched', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
"""
