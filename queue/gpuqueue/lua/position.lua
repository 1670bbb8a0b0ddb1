-- Announces a queued task's new position to its callback, once per change (atomic check against the last one and
-- the task still being queued, so it can never supersede a `ready`).
-- OP: tid pos est active queued
local t = task_table(OP.tid)
if not t or t.state ~= 'queued' or t.cb == nil or t.cb == '' then return 0 end
if redis.call('HGET', K_POSITIONS, OP.tid) == tostring(OP.pos) then return 0 end
redis.call('HSET', K_POSITIONS, OP.tid, OP.pos)
local n = redis.call('HINCRBY', k_task(OP.tid), 'qn', 1)
outbox_add(OP.tid, t, 'queued', notif_id(t, 'queued_' .. num(t.grants, 0) .. '_' .. n),
  {position = OP.pos, est = OP.est, active = OP.active, queued = OP.queued})
return 1
