-- Registers or resizes a GPU. Capacity 0 drains it: running leases finish, nothing new lands there, and an idle
-- drained GPU is forgotten.
-- OP: id cap
local used = num(redis.call('HGET', K_GPU_USED, OP.id), 0)
if OP.cap == 0 and used == 0 then
  redis.call('HDEL', K_GPUS, OP.id)
  redis.call('ZREM', K_GPU_ORDER, OP.id)
  redis.call('HDEL', K_GPU_USED, OP.id)
  event({op = 'gpu_removed', gpu = OP.id})
  return cjson.encode({result = 'removed', grants = schedule()})
end
redis.call('HSET', K_GPUS, OP.id, OP.cap)
if redis.call('ZSCORE', K_GPU_ORDER, OP.id) == false then
  redis.call('ZADD', K_GPU_ORDER, redis.call('INCR', P .. 'gpu_seq'), OP.id)
end
redis.call('HSETNX', K_GPU_USED, OP.id, 0)
event({op = 'gpu', gpu = OP.id, cap = OP.cap, used = used})
return cjson.encode({result = 'ok', grants = schedule()})
