"""The budget's two Redis scripts: settle (write spend, drop holds) and reserve (check and hold).

Per scope (the day's global total, or one API key's) there are two keys in one hash slot: a hash
of cumulative spend, one field per process, and a sorted set of holds. A hold is the worst-case
cost of one request in flight: member ``<process field>:<seq>:<nano-USD>``, scored by when it
expires (Redis's own clock, ms), so a process that dies mid-request frees its holds by itself.
Both scripts purge expired holds first and answer, per scope, ``{this process's spend field
before, spend of all processes, held by all, held by this process}`` in nano-USD.
"""

from __future__ import annotations

import hashlib

__all__ = ["RESERVE_SCRIPT", "RESERVE_SHA", "SETTLE_SCRIPT", "SETTLE_SHA"]

_TOTALS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function totals(spend, holds, field, now)
  redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
  local before = redis.call('HGET', spend, field) or '0'
  local total = 0
  for _, v in ipairs(redis.call('HVALS', spend)) do total = total + tonumber(v) end
  local held, mine = 0, 0
  local prefix = field .. ':'
  for _, m in ipairs(redis.call('ZRANGE', holds, 0, -1)) do
    local amount = tonumber(string.match(m, ':(%d+)$')) or 0
    held = held + amount
    if string.sub(m, 1, #prefix) == prefix then mine = mine + amount end
  end
  return {before, total, held, mine}
end
local function fmt(row)
  return {row[1], string.format('%.0f', row[2]), string.format('%.0f', row[3]), string.format('%.0f', row[4])}
end
"""

# KEYS: (spend hash, holds zset) per scope. ARGV[1]: this process's field, ARGV[2]: key TTL (s),
# ARGV[3]: n scopes, ARGV[3 + i]: cumulative nano-USD for scope i or '' (read only), then the
# members of settled holds to drop. A lower spend value than the stored one is a late duplicate.
# The spend is written and the holds dropped in one step: between them, nothing is uncounted.
SETTLE_SCRIPT = (
    _TOTALS
    + """
local field, ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local out = {}
for i = 1, n do
  local spend, holds = KEYS[2 * i - 1], KEYS[2 * i]
  local mine = ARGV[3 + i]
  if mine ~= '' then
    local stored = redis.call('HGET', spend, field) or '0'
    if tonumber(mine) > tonumber(stored) then redis.call('HSET', spend, field, mine) end
    redis.call('EXPIRE', spend, ttl)
  end
  for j = 4 + n, #ARGV do redis.call('ZREM', holds, ARGV[j]) end
  out[i] = fmt(totals(spend, holds, field, now))
end
return out
"""
)

# KEYS as above. ARGV[1]: field, ARGV[2]: key TTL (s), ARGV[3]: how long a hold lives (ms),
# ARGV[4]: '1' to refuse at a cap, ARGV[5]: n scopes, ARGV[5 + i]: scope i's cap in nano-USD or
# '', then per hold, in order: its member, its number of scopes k, and k scope indexes. A hold is
# refused when spend + holds (this batch's earlier ones included) already reach one of its caps:
# the last request admitted can overshoot a cap by at most its own worst case. Returns {per
# hold: the index of the refusing scope or 0, totals per scope as they were before the batch}.
RESERVE_SCRIPT = (
    _TOTALS
    + """
local field, ttl, life, enforce, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local now = now_ms()
local rows, used = {}, {}
for i = 1, n do
  local row = totals(KEYS[2 * i - 1], KEYS[2 * i], field, now)
  rows[i] = fmt(row)
  used[i] = row[2] + row[3]
end
local verdicts = {}
local j = 6 + n
while j <= #ARGV do
  local member, k = ARGV[j], tonumber(ARGV[j + 1])
  local amount = tonumber(string.match(member, ':(%d+)$')) or 0
  local refused = 0
  for x = 1, k do
    local i = tonumber(ARGV[j + 1 + x])
    local cap = ARGV[5 + i]
    if refused == 0 and enforce == '1' and cap ~= '' and used[i] >= tonumber(cap) then refused = i end
  end
  if refused == 0 then
    for x = 1, k do
      local i = tonumber(ARGV[j + 1 + x])
      redis.call('ZADD', KEYS[2 * i], now + life, member)
      redis.call('EXPIRE', KEYS[2 * i], ttl)
      used[i] = used[i] + amount
    end
  end
  verdicts[#verdicts + 1] = refused
  j = j + 2 + k
end
return {verdicts, rows}
"""
)

SETTLE_SHA = hashlib.sha1(SETTLE_SCRIPT.encode()).hexdigest()
RESERVE_SHA = hashlib.sha1(RESERVE_SCRIPT.encode()).hexdigest()
