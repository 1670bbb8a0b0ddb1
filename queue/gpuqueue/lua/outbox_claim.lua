-- Claims due notifications for delivery: each is hidden for vis_ms (another replica retries it if this one dies).
-- Superseded ones (a newer notification exists for the same task) are dropped unsent.
-- OP: limit vis_ms. Returns {items, next_ms}: next_ms = ms until the next one is due (-1: none), when none is due now.
local ids = redis.call('ZRANGEBYSCORE', K_OUTBOX, '-inf', NOW, 'LIMIT', 0, OP.limit)
local out = {}
for _, nid in ipairs(ids) do
  local n = hgetall(k_notif(nid))
  if n.tid == nil then
    redis.call('ZREM', K_OUTBOX, nid)
  elseif redis.call('HGET', K_LATEST, n.tid) ~= nid then
    redis.call('ZREM', K_OUTBOX, nid)
    redis.call('DEL', k_notif(nid))
    redis.call('HINCRBY', K_COUNTERS, 'notify:superseded', 1)
  else
    redis.call('ZADD', K_OUTBOX, NOW + OP.vis_ms, nid)
    n.attempts = redis.call('HINCRBY', k_notif(nid), 'attempts', 1)
    n.id = nid
    out[#out + 1] = n
  end
end
local next_ms = -1
if #out == 0 then
  local first = redis.call('ZRANGE', K_OUTBOX, 0, 0, 'WITHSCORES')
  if #first == 2 then next_ms = math.max(0, tonumber(first[2]) - NOW) end
end
return cjson.encode({items = out, next_ms = next_ms})
