"""The store's atomic updates, Lua run by Redis with Redis's own clock (`TIME`), so that two
gateways never both spend the last token and gateway clocks do not matter. Keys are built
in the scripts from the tenant's prefix `owc:t:{tenant}` (standalone Redis; the braces
keep one tenant's keys in one Redis Cluster slot)."""

_HOLDS = """
local HOLD_TTL_S = 259200
local function adjust(p, kind, period, delta, ttl)
  if delta == 0 or period == '-1' then return end
  local key = p .. kind .. period
  if redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, delta)
  elseif delta > 0 then redis.call('SET', key, delta, 'EX', ttl) end
end
local function refund(p, hold)
  local cost, day, month = string.match(hold, '^(%S+) (%S+) (%S+)$')
  adjust(p, ':d:', day, -tonumber(cost), 259200)
  adjust(p, ':m:', month, -tonumber(cost), 5356800)
  return tonumber(cost), day, month
end
"""

_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, rate, cap)
  local h = redis.call('HMGET', key, 'v', 't')
  if not h[1] then return cap end
  return math.min(cap, tonumber(h[1]) + math.max(0, now - tonumber(h[2])) * rate)
end
local function put(key, v, rate, cap)
  redis.call('HSET', key, 'v', tostring(v), 't', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((cap - math.min(v, 0)) / rate * 1000) + 60000)
end
"""

# ARGV: prefix, rpm, burst, tpm, cost, max_concurrent, lease, lease_ttl_s, daily, monthly
# (-1: no such limit), and for a batch line its hold key and line ('' none): a line reserves
# once (its hold: "cost day month"); a rerun of a line still held is admitted on that hold. Returns strings: code ('ok' or a refusal), retry_s, requests
# remaining, requests reset_s, tokens remaining, tokens reset_s, day used, month used,
# day, month (yyyymm), day reset_s, month reset_s.
RESERVE = _CLOCK + _HOLDS + """
local p = ARGV[1]
local rpm, burst, tpm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cost, maxc, lease, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local daily, monthly = tonumber(ARGV[9]), tonumber(ARGV[10])
local day = math.floor(now / 86400)
local z = day + 719468
local era = math.floor(z / 146097)
local doe = z - era * 146097
local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
local mp = math.floor((5 * doy + 2) / 153)
local m = mp < 10 and mp + 3 or mp - 9
local y = yoe + era * 400 + (m <= 2 and 1 or 0)
local month = y * 100 + m
-- the next month's first day, days since 1970-01-01
local ny, nm = y, m + 1
if nm == 13 then ny, nm = y + 1, 1 end
local yy = nm <= 2 and ny - 1 or ny
local e2 = math.floor(yy / 400)
local y2 = yy - e2 * 400
local mp2 = nm > 2 and nm - 3 or nm + 9
local first = e2 * 146097 + y2 * 365 + math.floor(y2 / 4) - math.floor(y2 / 100) + math.floor((153 * mp2 + 2) / 5) - 719468
local dreset, mreset = (day + 1) * 86400 - now, first * 86400 - now
local dkey, mkey = p .. ':d:' .. day, p .. ':m:' .. month
local dused = daily >= 0 and tonumber(redis.call('GET', dkey) or '0') or -1
local mused = monthly >= 0 and tonumber(redis.call('GET', mkey) or '0') or -1
local rq, tk = -1, -1
if rpm > 0 then rq = level(p .. ':rq', rpm / 60, burst) end
if tpm > 0 then tk = level(p .. ':tk', tpm / 60, tpm) end
local n = 0
if maxc >= 0 then
  redis.call('ZREMRANGEBYSCORE', p .. ':cc', '-inf', now)
  n = redis.call('ZCARD', p .. ':cc')
end
local function out(code, retry)
  local rqr = rpm > 0 and (burst - rq) / (rpm / 60) or 0
  local tkr = tpm > 0 and (tpm - tk) / (tpm / 60) or 0
  return {code, tostring(retry), tostring(rq), tostring(rqr), tostring(tk), tostring(tkr), tostring(dused),
          tostring(mused), tostring(day), tostring(month), tostring(dreset), tostring(mreset)}
end
local hk, hf = ARGV[11] or '', ARGV[12] or ''
if hk ~= '' and redis.call('HEXISTS', hk, hf) == 1 then return out('ok', 0) end
if daily >= 0 and dused + cost > daily then return out('daily', dreset) end
if monthly >= 0 and mused + cost > monthly then return out('monthly', mreset) end
if maxc >= 0 and n >= maxc then return out('concurrency', 1) end
if rpm > 0 and rq < 1 then return out('requests', (1 - rq) / (rpm / 60)) end
if tpm > 0 and cost > tpm then return out('too_large', 60) end
if tpm > 0 and tk < cost then return out('tokens', (cost - tk) / (tpm / 60)) end
if rpm > 0 then rq = rq - 1; put(p .. ':rq', rq, rpm / 60, burst) end
if tpm > 0 then tk = tk - cost; put(p .. ':tk', tk, tpm / 60, tpm) end
if maxc >= 0 then
  redis.call('ZADD', p .. ':cc', now + ttl, lease)
  redis.call('EXPIRE', p .. ':cc', math.ceil(ttl * 2))
end
if daily >= 0 then
  dused = redis.call('INCRBY', dkey, cost)
  redis.call('EXPIRE', dkey, math.ceil(dreset) + 172800)
end
if monthly >= 0 then
  mused = redis.call('INCRBY', mkey, cost)
  redis.call('EXPIRE', mkey, math.ceil(mreset) + 3024000)
end
if hk ~= '' then
  redis.call('HSET', hk, hf, string.format('%d %d %d', cost, daily >= 0 and day or -1, monthly >= 0 and month or -1))
  redis.call('EXPIRE', hk, HOLD_TTL_S)
end
return out('ok', 0)
"""

# ARGV: prefix, tpm, delta (tokens to add to the reservation; negative: a refund), lease,
# day, month, daily?, monthly?, usage key, usage member, requests, prompt, completion,
# reasoning, errors, usage ttl_s. Settles one request once.
SETTLE = _CLOCK + """
local p, tpm, delta, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if tpm > 0 and delta ~= 0 then
  local tk = math.min(tpm, level(p .. ':tk', tpm / 60, tpm) - delta)
  put(p .. ':tk', tk, tpm / 60, tpm)
end
if lease ~= '' then redis.call('ZREM', p .. ':cc', lease) end
if ARGV[7] == '1' and delta ~= 0 and redis.call('EXISTS', p .. ':d:' .. ARGV[5]) == 1 then
  redis.call('INCRBY', p .. ':d:' .. ARGV[5], delta)
end
if ARGV[8] == '1' and delta ~= 0 and redis.call('EXISTS', p .. ':m:' .. ARGV[6]) == 1 then
  redis.call('INCRBY', p .. ':m:' .. ARGV[6], delta)
end
local u = ARGV[9]
if u == '' then return 1 end  -- a charge without a usage record (a batch line's batch quota)
redis.call('HINCRBY', u, 'requests', ARGV[11])
redis.call('HINCRBY', u, 'prompt_tokens', ARGV[12])
redis.call('HINCRBY', u, 'completion_tokens', ARGV[13])
redis.call('HINCRBY', u, 'reasoning_tokens', ARGV[14])
redis.call('HINCRBY', u, 'errors', ARGV[15])
redis.call('EXPIRE', u, ARGV[16])
redis.call('ZADD', 'owc:usage', tonumber(ARGV[5]), ARGV[10])
return 1
"""

# KEYS: concurrency sets; ARGV[1]: ttl_s, ARGV[i + 1]: the lease in KEYS[i]. Extends the
# leases this gateway still holds (XX: a lease that expired stays gone).
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(ttl * 2))
end
return #KEYS
"""

# A batch line's charge, once per line whoever calls it (the settled marker, HSETNX): its hold
# (the reservation of whichever run made it) refunded and, the first time, the tokens charged
# and the usage recorded. ARGV: prefix, hold key, settled key, line, tokens, day, month (of the
# run: used when no hold is left; -1: no such quota), usage key ('': none), member, requests,
# prompt, completion, reasoning, errors, usage ttl_s, usage day. Returns 1 when this call charged.
SETTLE_LINE = _HOLDS + """
local p, hk, sk, f = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local day, month, reserved = ARGV[6], ARGV[7], 0
local hold = redis.call('HGET', hk, f)
if hold then
  reserved, day, month = refund(p, hold)
  redis.call('HDEL', hk, f)
end
local first = redis.call('HSETNX', sk, f, '1') == 1
redis.call('EXPIRE', sk, HOLD_TTL_S)
if not first then return 0 end
adjust(p, ':d:', day, tonumber(ARGV[5]), 259200)
adjust(p, ':m:', month, tonumber(ARGV[5]), 5356800)
local u = ARGV[8]
if u == '' then return 1 end
redis.call('HINCRBY', u, 'requests', ARGV[10])
redis.call('HINCRBY', u, 'prompt_tokens', ARGV[11])
redis.call('HINCRBY', u, 'completion_tokens', ARGV[12])
redis.call('HINCRBY', u, 'reasoning_tokens', ARGV[13])
redis.call('HINCRBY', u, 'errors', ARGV[14])
redis.call('EXPIRE', u, ARGV[15])
redis.call('ZADD', 'owc:usage', tonumber(ARGV[16]), ARGV[9])
return 1
"""

# Batch lines' holds given back (refunded, deleted): ARGV: prefix, hold key, settled key,
# settled_only ('1': only lines already settled, i.e. a late rerun's hold), lines (none: all).
RELEASE_LINES = _HOLDS + """
local p, hk, sk, only = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local lines = {}
if #ARGV > 4 then for i = 5, #ARGV do lines[#lines + 1] = ARGV[i] end else lines = redis.call('HKEYS', hk) end
local n = 0
for _, f in ipairs(lines) do
  local hold = redis.call('HGET', hk, f)
  if hold and (not only or redis.call('HEXISTS', sk, f) == 1) then
    refund(p, hold)
    redis.call('HDEL', hk, f)
    n = n + 1
  end
end
return n
"""
