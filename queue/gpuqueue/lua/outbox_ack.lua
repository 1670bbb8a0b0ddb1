-- Records a delivery attempt: delivered -> gone; failed -> retried after delay_ms, or dropped after max_attempts.
-- OP: id ok delay_ms max_attempts error
local nk = k_notif(OP.id)
local n = hgetall(nk)
if n.tid == nil then
  redis.call('ZREM', K_OUTBOX, OP.id)
  return 'gone'
end
local function drop()
  redis.call('ZREM', K_OUTBOX, OP.id)
  redis.call('DEL', nk)
  if redis.call('HGET', K_LATEST, n.tid) == OP.id then redis.call('HDEL', K_LATEST, n.tid) end
end
if OP.ok then
  drop()
  redis.call('HINCRBY', K_COUNTERS, 'notify:sent', 1)
  return 'sent'
end
if num(n.attempts, 0) >= OP.max_attempts then
  drop()
  redis.call('HINCRBY', K_COUNTERS, 'notify:failed', 1)
  if redis.call('EXISTS', k_task(n.tid)) == 1 then
    redis.call('HSET', k_task(n.tid), 'notify_error', n.status .. ': ' .. OP.error)
  end
  return 'dropped'
end
redis.call('HSET', nk, 'last_error', OP.error)
redis.call('ZADD', K_OUTBOX, NOW + OP.delay_ms, OP.id)
redis.call('HINCRBY', K_COUNTERS, 'notify:retried', 1)
return 'retry'
