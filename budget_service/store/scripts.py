"""The Lua scripts: one per write, each touching the keys of one run (one Cluster slot) only.

`REPORT` applies a whole report in one script: existence of the run, idempotency check on
`report_id`, decay to the report's step (the rule in engine/estimates.py), increments, run totals,
and the report id record, all in one atomic step that reaches the AOF as one unit. Report ids are
kept for `report_id_ttl_s` (by Redis server time) and at most `report_id_max` per run.
`READ` answers a whole snapshot in one reply. KEYS are `run_keys(run_id)` (keys.py), in order.
"""

from __future__ import annotations

# Prompt ids travel as two arguments, their byte lengths (uint32 LE) and their concatenation,
# not one argument each: packing thousands of arguments costs redis-py more than the round trip.
# Lua 5.1's unpack() has a C-stack limit (~8,000 values), so commands take ids in chunks.
_HELPERS = """
local CHUNK = 1000
local function touch(ttl)
  if ttl > 0 then for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end end
end
local function split_ids(lengths, blob)
  local ids, pos = {}, 1
  for i = 1, #lengths / 4 do
    local n = struct.unpack('<I4', lengths, 4 * i - 3)
    ids[i] = string.sub(blob, pos, pos + n - 1)
    pos = pos + n
  end
  return ids
end
-- A record as a table of its seven fields; one of the 40-byte layout gets zero rejected norms.
local function unpack_record(s)
  if #s == 40 then
    local r = {struct.unpack('<ddddd', s)}
    r[6], r[7] = 0, 0
    return r
  end
  return {struct.unpack('<ddddddd', s)}
end
local function hmget(key, ids)
  local values = {}
  for lo = 1, #ids, CHUNK do
    local got = redis.call('HMGET', key, unpack(ids, lo, math.min(lo + CHUNK - 1, #ids)))
    for j = 1, #got do values[lo + j - 1] = got[j] end
  end
  return values
end
"""

# KEYS: run, stats, totals, reports, latest
# ARGV: report_id, step, window_ms, max_ids, ttl_ms, numbers (n x 6 float64 LE: the record's
# fields but last_step), id lengths, ids, sync ("1": a duplicate rewrites the totals, for the
# WAIT that follows it: see connection.py)
# -> {applied, duplicate}; {-1, 0} when the run does not exist.
REPORT = (
    _HELPERS
    + """
local run = redis.call('HMGET', KEYS[1], 'config', 'half_life')
if not run[1] then return {-1, 0} end
local report_id = ARGV[1]
if redis.call('ZSCORE', KEYS[4], report_id) then
  local totals = redis.call('GET', KEYS[3])
  if ARGV[9] == '1' and totals then redis.call('SET', KEYS[3], totals, 'KEEPTTL') end
  return {0, 1}
end

local step = tonumber(ARGV[2])
local half_life = tonumber(run[2])  -- nil: no decay
local numbers = ARGV[6]
local ids = split_ids(ARGV[7], ARGV[8])
local n = #ids

local function decay(elapsed)
  if half_life == nil or elapsed <= 0 then return 1 end
  return 0.5 ^ (elapsed / half_life)
end
-- Stored values at step s seen at step t >= s are scaled by decay(t - s); an observation older
-- than the stored last_step is itself scaled by decay(s - t) and last_step stays.
local SUMMED = {1, 2, 3, 4, 6, 7}  -- the record fields that add up (5 is last_step)
local function merge(rec, d)
  local out = {}
  if rec == nil then
    for k = 1, 6 do out[SUMMED[k]] = d[k] end
    out[5] = step
  elseif step >= rec[5] then
    local f = decay(step - rec[5])
    for k = 1, 6 do out[SUMMED[k]] = rec[SUMMED[k]] * f + d[k] end
    out[5] = step
  else
    local f = decay(rec[5] - step)
    for k = 1, 6 do out[SUMMED[k]] = rec[SUMMED[k]] + d[k] * f end
    out[5] = rec[5]
  end
  return out
end
local function pack(rec)
  return struct.pack('<ddddddd', rec[1], rec[2], rec[3], rec[4], rec[5], rec[6], rec[7])
end

local stored = hmget(KEYS[2], ids)

local recs, order = {}, {}
local total = {0, 0, 0, 0, 0, 0}
local pos = 1
for i = 1, n do
  local pid = ids[i]
  local d = {struct.unpack('<dddddd', numbers, pos)}
  pos = d[7]
  local rec = recs[pid]
  if rec == nil then
    order[#order + 1] = pid
    if stored[i] then rec = unpack_record(stored[i]) end
  end
  recs[pid] = merge(rec, d)
  for k = 1, 6 do total[k] = total[k] + d[k] end
end

local out = {}
for k = 1, #order do
  local pid = order[k]
  out[#out + 1] = pid
  out[#out + 1] = pack(recs[pid])
  if #out >= 2 * CHUNK then redis.call('HSET', KEYS[2], unpack(out)); out = {} end
end
if #out > 0 then redis.call('HSET', KEYS[2], unpack(out)) end

local totals = redis.call('GET', KEYS[3])
local trec = nil
if totals then trec = unpack_record(totals) end
redis.call('SET', KEYS[3], pack(merge(trec, total)))

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[4], now, report_id)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('(%d', now - tonumber(ARGV[3])))
local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[4])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1) end
touch(tonumber(ARGV[5]))
return {n, 0}
"""
)

# KEYS: run, stats, totals; ARGV: id lengths, ids
# -> {config, totals|nil, records (n x 56 bytes, zeros where missing), seen ("1"/"0" per id)},
# or nil when the run does not exist. Two strings instead of n replies: less to parse.
READ = (
    _HELPERS
    + """
local config = redis.call('HGET', KEYS[1], 'config')
if not config then return nil end
local values = hmget(KEYS[2], split_ids(ARGV[1], ARGV[2]))
local zero, old_tail = string.rep('\\0', 56), string.rep('\\0', 16)
local records, seen = {}, {}
for i = 1, #values do
  if not values[i] then records[i] = zero; seen[i] = '0'
  elseif #values[i] == 40 then records[i] = values[i] .. old_tail; seen[i] = '1'
  else records[i] = values[i]; seen[i] = '1' end
end
return {config, redis.call('GET', KEYS[3]), table.concat(records), table.concat(seen)}
"""
)

# KEYS: run, stats, totals, reports, latest; ARGV: config, half_life, now_ms, ttl_ms
# -> {created (0/1), created_at}
PUT_RUN = (
    _HELPERS
    + """
local created = redis.call('HSETNX', KEYS[1], 'created_at', ARGV[3])
redis.call('HSET', KEYS[1], 'config', ARGV[1], 'half_life', ARGV[2], 'updated_at', ARGV[3])
touch(tonumber(ARGV[4]))
return {created, redis.call('HGET', KEYS[1], 'created_at')}
"""
)

# Compare-and-set of the config (PATCH): KEYS as PUT; ARGV: expected, config, half_life, now_ms,
# ttl_ms -> {1, created_at} done; {0} the config changed meanwhile; {-1} no such run.
PATCH_RUN = (
    _HELPERS
    + """
local current = redis.call('HGET', KEYS[1], 'config')
if not current then return {-1} end
if current ~= ARGV[1] then return {0} end
redis.call('HSET', KEYS[1], 'config', ARGV[2], 'half_life', ARGV[3], 'updated_at', ARGV[4])
touch(tonumber(ARGV[5]))
return {1, redis.call('HGET', KEYS[1], 'created_at')}
"""
)

# KEYS: run, stats, totals, reports, latest, history; ARGV: allocation JSON, ttl_ms, history
# point (32 bytes), HISTORY_MAX -> 1, or 0 if no run.
SAVE_ALLOCATION = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[5], ARGV[1])
redis.call('RPUSH', KEYS[6], ARGV[3])
redis.call('LTRIM', KEYS[6], -tonumber(ARGV[4]), -1)
touch(tonumber(ARGV[2]))
return 1
"""
)

# KEYS: all keys of the run -> 1 if the run existed. UNLINK frees big hashes off the main thread.
DELETE_RUN = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('UNLINK', unpack(KEYS))
return existed
"""
