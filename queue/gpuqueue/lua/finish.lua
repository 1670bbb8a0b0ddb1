-- A worker's status report: processing (extends the lease) | completed | failed | cancelled (free or withdraw).
-- OP: tid status fence(-1 = unfenced) error peak
local t = task_table(OP.tid)
if not t then return cjson.encode({result = 'not_found'}) end
local st = t.state
local live = st == 'granted' or st == 'processing'
if OP.fence >= 0 and (st == 'queued' or live) and num(t.fence, -1) ~= OP.fence then
  return cjson.encode({result = 'stale', state = st, fence = num(t.fence, -1)})
end
if OP.status == 'processing' then
  if not live then return cjson.encode({result = 'conflict', state = st}) end
  local exp = NOW + num(t.ttl_ms, ttl_of(t.lane))
  if st == 'granted' then redis.call('HSET', k_task(OP.tid), 'processing_at', NOW) end
  redis.call('HSET', k_task(OP.tid), 'state', 'processing', 'expires_at', exp)
  redis.call('ZADD', K_EXPIRY, exp, OP.tid)
  return cjson.encode({result = 'ok', state = 'processing', expires_at = exp})
end
if live then
  local used = free(OP.tid, t)
  local dur = (NOW - num(t.granted_at, NOW)) / 1000
  if OP.status == 'completed' then
    if t.model ~= '' then ema('m:' .. t.model, dur) end
    ema('l:' .. t.lane, dur)
  end
  observe('run', t.lane, dur)
  if OP.peak > 0 and t.model ~= '' then
    local old = tonumber(redis.call('HGET', K_LEARNED, t.model))
    local new = OP.peak
    if old then new = math.max(OP.peak, math.floor(0.9 * old + 0.1 * OP.peak)) end
    redis.call('HSET', K_LEARNED, t.model, new)
  end
  finalize(OP.tid, t, OP.status, OP.error)
  event({op = 'release', tid = OP.tid, gpu = t.gpu, mb = t.mb, used = used, outcome = OP.status})
  return cjson.encode({result = 'ok', state = OP.status, grants = schedule()})
end
if st == 'queued' then
  if OP.status == 'completed' then return cjson.encode({result = 'conflict', state = st}) end
  unqueue(OP.tid, t)
  finalize(OP.tid, t, OP.status, OP.error)
  event({op = 'dequeue', tid = OP.tid, outcome = OP.status})
  return cjson.encode({result = 'ok', state = OP.status, grants = schedule()})
end
return cjson.encode({result = 'ok', state = st, unchanged = true})
