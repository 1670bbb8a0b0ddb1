-- Sweeps deadlines: expired leases are freed and re-queued once, then failed; queued pull/lease requests nobody
-- polls are dropped. Always ends with a grant pass (any replica may run this; it is idempotent).
-- OP: limit
local due = redis.call('ZRANGEBYSCORE', K_EXPIRY, '-inf', NOW, 'LIMIT', 0, OP.limit)
local out = {}
for _, tid in ipairs(due) do
  redis.call('ZREM', K_EXPIRY, tid)
  local t = task_table(tid)
  if t then
    if t.state == 'queued' and t.kind ~= 'callback' then
      unqueue(tid, t)
      local state = 'cancelled'
      local msg = 'dropped: nobody polled this request for ' .. (CFG.poll_ttl_ms / 1000) .. ' s'
      if num(t.grants, 0) > 0 then
        state = 'failed'
        msg = 'lease expired (owner ' .. t.owner .. ' stopped heartbeating) and nobody came back for the re-queued request'
      end
      finalize(tid, t, state, msg)
      event({op = 'drop', tid = tid, outcome = state})
      out[#out + 1] = {tid = tid, action = state}
    elseif t.state == 'granted' or t.state == 'processing' then
      local used = free(tid, t)
      redis.call('HINCRBY', K_COUNTERS, 'expired:' .. t.lane, 1)
      event({op = 'expire', tid = tid, gpu = t.gpu, mb = t.mb, used = used})
      local ttl_s = num(t.ttl_ms, ttl_of(t.lane)) / 1000
      local grants = num(t.grants, 0)
      local active, queued = lane_counts(t.lane)
      if t.resident ~= '1' and grants < CFG.max_attempts then
        requeue(tid, t, 'lease expired after ' .. ttl_s .. ' s without a heartbeat (owner ' .. t.owner .. '); re-queued')
        if t.cb ~= '' then
          outbox_add(tid, t, 'queued', notif_id(t, 'requeued_' .. grants),
            {active = active, queued = queued + 1})
        end
        out[#out + 1] = {tid = tid, action = 'requeued'}
      else
        local msg
        if t.resident == '1' then
          msg = 'resident lease expired: its owner stopped heartbeating'
        else
          msg = 'lease expired ' .. grants .. ' times without a heartbeat (' .. ttl_s .. ' s TTL); the worker running '
            .. 'it died or hung, so the task failed'
        end
        finalize(tid, t, 'failed', msg)
        if t.cb ~= '' then
          outbox_add(tid, t, 'failed', notif_id(t, 'failed_' .. grants),
            {error = msg, active = active, queued = queued})
        end
        out[#out + 1] = {tid = tid, action = 'failed'}
      end
    end
  end
end
return cjson.encode({expired = out, grants = schedule()})
