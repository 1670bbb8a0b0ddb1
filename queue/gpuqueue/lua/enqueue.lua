-- Enqueue a task (idempotent per lane + session id) and run a grant pass.
-- OP: lane sid client key mb model type data cb kind gpus owner resident ttl_ms job
-- A session reuses its task id for every job, so a live task that belongs to another job is `busy`, never `exists`
-- (answering `exists` would leave the new job without a task of its own).
local tid = OP.lane .. ':' .. OP.sid
local tk = k_task(tid)
local cur = redis.call('HGET', tk, 'state')
if cur == 'queued' or cur == 'granted' or cur == 'processing' then
  local job = redis.call('HGET', tk, 'job') or ''
  if OP.job ~= '' and job ~= '' and job ~= OP.job then
    return cjson.encode({result = 'busy', state = cur})
  end
  local active, queued = lane_counts(OP.lane)
  return cjson.encode({result = 'exists', task = hgetall(tk), active = active, queued = queued})
end
if OP.resident ~= '1' then
  if redis.call('ZCARD', k_queued(OP.lane)) >= CFG.lane_max_queued then
    return cjson.encode({result = 'lane_full'})
  end
  if OP.key ~= 'open' and num(redis.call('HGET', K_KEYSTATS, 'q:' .. OP.key), 0) >= CFG.key_max_queued then
    return cjson.encode({result = 'key_full'})
  end
end
redis.call('DEL', tk)
local seq = redis.call('INCR', P .. 'seq')
redis.call('HSET', tk, 'lane', OP.lane, 'sid', OP.sid, 'client', OP.client, 'key', OP.key, 'mb', OP.mb,
  'model', OP.model, 'type', OP.type, 'data', OP.data, 'cb', OP.cb, 'kind', OP.kind, 'gpus', OP.gpus,
  'owner', OP.owner, 'resident', OP.resident, 'ttl_ms', OP.ttl_ms, 'job', OP.job or '', 'state', 'queued', 'seq', seq, 'enq_at', NOW,
  'wait_from', NOW, 'grants', 0, 'bypassed', 0, 'qn', 0, 'error', '')
if redis.call('RPUSH', k_q(OP.lane, OP.client), OP.sid) == 1 then
  heads_add(OP.lane, redis.call('INCR', P .. 'ticket'), OP.client)
end
redis.call('ZADD', k_queued(OP.lane), seq, OP.sid)
if OP.cb ~= '' then redis.call('SADD', k_cbqueued(OP.lane), OP.sid) end
redis.call('HINCRBY', K_KEYSTATS, 'q:' .. OP.key, 1)
redis.call('HDEL', K_POSITIONS, tid)
if OP.kind ~= 'callback' then redis.call('ZADD', K_EXPIRY, NOW + CFG.poll_ttl_ms, tid) end
event({op = 'enqueue', tid = tid, mb = OP.mb, client = OP.client})
local grants = schedule()
local active, queued = lane_counts(OP.lane)
return cjson.encode({result = 'created', task = hgetall(tk), grants = grants, active = active, queued = queued})
