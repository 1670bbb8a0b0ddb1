-- Keeps a granted lease alive (fenced), or a queued pull/lease request from being dropped as abandoned.
-- OP: tid fence(-1 = unfenced) queued_only(bool: a status poll must not extend a granted lease)
--     watch(bool: a long-poll waits on this task, so its grant is published to the replicas' listeners)
local t = task_table(OP.tid)
if not t then return cjson.encode({result = 'not_found'}) end
local st = t.state
if st == 'granted' or st == 'processing' then
  if OP.fence >= 0 and num(t.fence, -1) ~= OP.fence then
    return cjson.encode({result = 'stale', state = st, fence = num(t.fence, -1)})
  end
  if OP.queued_only then return cjson.encode({result = 'ok', state = st}) end
  local exp = NOW + num(t.ttl_ms, ttl_of(t.lane))
  redis.call('HSET', k_task(OP.tid), 'expires_at', exp)
  redis.call('ZADD', K_EXPIRY, exp, OP.tid)
  return cjson.encode({result = 'ok', state = st, expires_at = exp})
end
if st == 'queued' then
  if OP.fence >= 0 then return cjson.encode({result = 'stale', state = st, fence = num(t.fence, -1)}) end
  if t.kind ~= 'callback' then redis.call('ZADD', K_EXPIRY, NOW + CFG.poll_ttl_ms, OP.tid) end
  if OP.watch and t.watched ~= '1' then redis.call('HSET', k_task(OP.tid), 'watched', 1) end
  return cjson.encode({result = 'ok', state = st})
end
return cjson.encode({result = 'conflict', state = st})
