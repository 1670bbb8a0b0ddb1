-- Shared part of every gateway script (prepended by gpuqueue.scheduler): key names, time, the grant pass.
-- ARGV[1] = key prefix (garycommon.rediskeys.QUEUE_PREFIX), ARGV[2] = config JSON, ARGV[3] = the operation's JSON.
-- Key names mirror garycommon.rediskeys (gq_*). Scripts touch keys they compute, so the gateway needs a single
-- Redis node (no cluster). All times are Redis server time in ms, so replicas on skewed clocks agree.
local P = ARGV[1]
local CFG = cjson.decode(ARGV[2])
local OP = cjson.decode(ARGV[3])

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOW = now_ms()

local function k_task(tid) return P .. 'task:' .. tid end
local function k_q(lane, client) return P .. 'q:' .. lane .. ':' .. client end
local function k_heads(lane) return P .. 'heads:' .. lane end
local function k_queued(lane) return P .. 'queued:' .. lane end
local function k_active(lane) return P .. 'active:' .. lane end
local function k_cbqueued(lane) return P .. 'cbqueued:' .. lane end
local K_RESIDENT = P .. 'resident'
local K_EXPIRY = P .. 'expiry'
local K_GPUS = P .. 'gpus'
local K_GPU_ORDER = P .. 'gpu_order'
local K_GPU_USED = P .. 'gpu_used'
local K_KEYSTATS = P .. 'keystats'
local K_DURATIONS = P .. 'durations'
local K_LEARNED = P .. 'vram_learned'
local K_COUNTERS = P .. 'counters'
local K_EVENTS = P .. 'events'
local K_OUTBOX = P .. 'outbox'
local K_LATEST = P .. 'notify_latest'
local K_POSITIONS = P .. 'positions'
local K_GRANTED = P .. 'granted'
local K_WAITING = P .. 'waiting_lanes'
local function k_hist(kind, lane) return P .. 'hist:' .. kind .. ':' .. lane end
local function k_notif(nid) return P .. 'notif:' .. nid end

local function num(v, default)
  local n = tonumber(v)
  if n == nil then return default end
  return n
end

local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end

local function observe(kind, lane, seconds)
  local key = k_hist(kind, lane)
  for i, bound in ipairs(CFG.buckets) do
    if seconds <= bound then redis.call('HINCRBY', key, 'b' .. i, 1) break end
  end
  redis.call('HINCRBYFLOAT', key, 'sum', seconds)
  redis.call('HINCRBY', key, 'count', 1)
end

local function event(fields)
  local args = {'XADD', K_EVENTS, 'MAXLEN', '~', CFG.events_maxlen, '*', 'ts', NOW}
  for k, v in pairs(fields) do args[#args + 1] = k; args[#args + 1] = v end
  redis.call(unpack(args))
end

-- The callback outbox. A notification id is created once (re-creating it is a no-op), and the newest id per
-- task supersedes older undelivered ones, so a stale `queued` can never arrive after `ready`.
-- Ids name the task's incarnation (`seq`, new at every enqueue): a session's tasks share one task id, and a
-- receiver that deduplicates by id must never mistake its second job's `ready` for its first job's.
local function notif_id(t, what)
  return t.sid .. '_' .. t.lane .. '_' .. (t.seq or '0') .. '_' .. what
end
local function outbox_add(tid, t, status, nid, extra)
  local nk = k_notif(nid)
  if redis.call('EXISTS', nk) == 1 then return nid end
  local args = {'HSET', nk, 'tid', tid, 'status', status, 'sid', t.sid, 'lane', t.lane, 'type', t.type or '',
                'cb', t.cb, 'job', t.job or '', 'attempts', 0, 'created', NOW}
  for k, v in pairs(extra or {}) do args[#args + 1] = k; args[#args + 1] = v end
  redis.call(unpack(args))
  redis.call('EXPIRE', nk, CFG.notif_ttl_s)
  redis.call('ZADD', K_OUTBOX, NOW, nid)
  redis.call('HSET', K_LATEST, tid, nid)
  return nid
end

local function lane_counts(lane)
  return redis.call('SCARD', k_active(lane)), redis.call('ZCARD', k_queued(lane))
end

local function ttl_of(lane)
  return num(CFG.lane_ttl_ms[lane], CFG.ttl_ms)
end

-- A client enters its lane's round-robin. K_WAITING lists the lanes that may have heads, so a grant pass reads
-- only those; a lane is added with its first head and dropped lazily, by the first pass that finds it empty.
local function heads_add(lane, score, client, only_new)
  local added
  if only_new then
    added = redis.call('ZADD', k_heads(lane), 'NX', score, client)
  else
    added = redis.call('ZADD', k_heads(lane), score, client)
  end
  if added == 1 then redis.call('SADD', K_WAITING, lane) end
end

local function load_gpus()
  local order = redis.call('ZRANGE', K_GPU_ORDER, 0, -1)
  local caps = hgetall(K_GPUS)
  local used = hgetall(K_GPU_USED)
  local gpus = {}
  for _, id in ipairs(order) do
    gpus[#gpus + 1] = {id = id, cap = num(caps[id], 0), used = num(used[id], 0)}
  end
  return gpus
end

-- Removes a queued task from its client's FIFO and the lane's indexes (cancel, liveness expiry).
local function unqueue(tid, t)
  local q = k_q(t.lane, t.client)
  redis.call('LREM', q, 1, t.sid)
  if redis.call('LLEN', q) == 0 then redis.call('ZREM', k_heads(t.lane), t.client) end
  redis.call('ZREM', k_queued(t.lane), t.sid)
  redis.call('SREM', k_cbqueued(t.lane), t.sid)
  redis.call('HINCRBY', K_KEYSTATS, 'q:' .. t.key, -1)
  redis.call('HDEL', K_POSITIONS, tid)
end

-- Frees a granted task's VRAM and slot.
local function free(tid, t)
  local mb = num(t.mb, 0)
  local used = redis.call('HINCRBY', K_GPU_USED, t.gpu, -mb)
  if t.resident == '1' then redis.call('SREM', K_RESIDENT, tid) else redis.call('SREM', k_active(t.lane), t.sid) end
  redis.call('HINCRBY', K_KEYSTATS, 'a:' .. t.key, -1)
  redis.call('ZREM', K_EXPIRY, tid)
  return used
end

local function finalize(tid, t, state, err)
  local tk = k_task(tid)
  redis.call('HSET', tk, 'state', state, 'finished_at', NOW, 'error', err or '')
  redis.call('ZREM', K_EXPIRY, tid)
  redis.call('HDEL', K_POSITIONS, tid)
  redis.call('EXPIRE', tk, CFG.retention_s)
  redis.call('HINCRBY', K_COUNTERS, 'finished:' .. t.lane .. ':' .. state, 1)
end

local function grant(c, gpu)
  local tid, tk = c.tid, k_task(c.tid)
  local f = redis.call('HMGET', tk, 'resident', 'mb', 'ttl_ms', 'key', 'wait_from', 'bypassed', 'cb', 'watched', 'type',
                      'seq', 'job')
  local t = {resident = f[1], mb = f[2], ttl_ms = f[3], key = f[4], wait_from = f[5], bypassed = f[6], cb = f[7] or '',
             watched = f[8], type = f[9], seq = f[10], job = f[11] or '', sid = c.sid, lane = c.lane}
  local q = k_q(c.lane, c.client)
  redis.call('LPOP', q)
  if redis.call('LLEN', q) == 0 then
    redis.call('ZREM', k_heads(c.lane), c.client)
  else
    -- the client's next task waits for the other clients' turns (round-robin)
    heads_add(c.lane, redis.call('INCR', P .. 'ticket'), c.client)
  end
  redis.call('ZREM', k_queued(c.lane), c.sid)
  redis.call('SREM', k_cbqueued(c.lane), c.sid)
  redis.call('HDEL', K_POSITIONS, tid)
  if t.resident == '1' then redis.call('SADD', K_RESIDENT, tid) else redis.call('SADD', k_active(c.lane), c.sid) end
  local mb = num(t.mb, 0)
  gpu.used = gpu.used + mb
  redis.call('HINCRBY', K_GPU_USED, gpu.id, mb)
  local fence = redis.call('INCR', P .. 'fence')
  local expires = NOW + num(t.ttl_ms, ttl_of(c.lane))
  local grants = redis.call('HINCRBY', tk, 'grants', 1)
  redis.call('HSET', tk, 'state', 'granted', 'gpu', gpu.id, 'fence', fence, 'granted_at', NOW, 'expires_at', expires,
             'bypassed', 0)
  redis.call('ZADD', K_EXPIRY, expires, tid)
  redis.call('HINCRBY', K_KEYSTATS, 'q:' .. t.key, -1)
  redis.call('HINCRBY', K_KEYSTATS, 'a:' .. t.key, 1)
  observe('wait', c.lane, (NOW - num(t.wait_from, NOW)) / 1000)
  event({op = 'grant', tid = tid, gpu = gpu.id, mb = mb, used = gpu.used, cap = gpu.cap, fence = fence,
         bypassed = num(t.bypassed, 0)})
  -- only a long-poll (GET /leases/{id}?wait=) listens; an acquire answered inline costs the replicas nothing
  if t.watched == '1' then redis.call('PUBLISH', K_GRANTED, tid) end
  if t.cb ~= nil and t.cb ~= '' then
    local active, queued = lane_counts(c.lane)
    outbox_add(tid, t, 'ready', notif_id(t, 'ready_' .. grants),
      {fence = fence, expires_at = expires, gpu = gpu.id, active = active, queued = queued, position = 0})
  end
  return {tid = tid, gpu = gpu.id, fence = fence, notify = (t.cb ~= nil and t.cb ~= '')}
end

-- One scheduling pass: grant heads in round-robin order while they fit. A head that does not fit on any GPU it
-- could ever use is "blocked"; every grant that overtakes it on such a GPU counts as a bypass, and once it has been
-- bypassed max_bypass times those GPUs take nothing else until it fits (big jobs are never starved).
local function schedule()
  local grants = {}
  local gpus = load_gpus()
  -- Within one pass only a grant changes what was read: the granted client's lane (its heads and running count)
  -- and that client's head task. Everything else is read once per pass, not once per grant.
  local lane_heads, head_info, lanes = {}, {}, {}
  for _, lane in ipairs(redis.call('SMEMBERS', K_WAITING)) do
    local cap = CFG.lanes[lane]  -- nil: a lane this replica does not serve (another replica's config may)
    if cap ~= nil then
      lanes[lane] = {cap = cap, active = cap > 0 and redis.call('SCARD', k_active(lane)) or 0}
    end
  end
  for _ = 1, CFG.max_grants do
    local cand = {}
    for lane, l in pairs(lanes) do
      if l.cap <= 0 or l.active < l.cap then
        local h = lane_heads[lane]
        if h == nil then
          h = redis.call('ZRANGE', k_heads(lane), 0, -1, 'WITHSCORES')
          lane_heads[lane] = h
          if #h == 0 then
            redis.call('SREM', K_WAITING, lane)
            lanes[lane] = nil
          end
        end
        for i = 1, #h, 2 do cand[#cand + 1] = {lane = lane, client = h[i], score = tonumber(h[i + 1])} end
      end
    end
    if #cand == 0 then break end
    table.sort(cand, function(a, b) return a.score < b.score end)
    local blocked, exhausted, chosen, chosen_gpu = {}, {}, nil, nil
    for _, c in ipairs(cand) do
      local hk = c.lane .. '\0' .. c.client
      local info = head_info[hk]
      if info == nil then
        local sid = redis.call('LINDEX', k_q(c.lane, c.client), 0)
        info = {sid = sid}
        if sid then
          info.t = redis.call('HMGET', k_task(c.lane .. ':' .. sid), 'mb', 'gpus', 'key', 'resident', 'bypassed')
        end
        head_info[hk] = info
      end
      local sid = info.sid
      if sid then
        c.sid = sid
        c.tid = c.lane .. ':' .. sid
        local t = info.t
        local mb = num(t[1], 0)
        local resident = t[4] == '1'
        local key_ok = resident or CFG.key_max_active <= 0 or t[3] == 'open'
          or num(redis.call('HGET', K_KEYSTATS, 'a:' .. t[3]), 0) < CFG.key_max_active
        if key_ok then
          local allowed = nil
          if t[2] and t[2] ~= '' then
            allowed = {}
            for _, id in ipairs(cjson.decode(t[2])) do allowed[id] = true end
          end
          local elig, any = {}, false
          for _, g in ipairs(gpus) do
            if (allowed == nil or allowed[g.id]) and g.cap >= mb then
              elig[g.id] = true
              any = true
              if chosen_gpu == nil and not exhausted[g.id] and g.cap - g.used >= mb then chosen_gpu = g end
            end
          end
          if chosen_gpu then
            chosen = c
            c.resident = resident
            for _, b in ipairs(blocked) do
              if b.elig[chosen_gpu.id] then b.t[5] = redis.call('HINCRBY', k_task(b.tid), 'bypassed', 1) end
            end
            break
          elseif any then
            blocked[#blocked + 1] = {tid = c.tid, elig = elig, t = t}
            if num(t[5], 0) >= CFG.max_bypass then
              for id in pairs(elig) do exhausted[id] = true end
            end
          end
        end
      end
    end
    if chosen == nil then break end
    grants[#grants + 1] = grant(chosen, chosen_gpu)
    if not chosen.resident then lanes[chosen.lane].active = lanes[chosen.lane].active + 1 end
    lane_heads[chosen.lane] = nil
    head_info[chosen.lane .. '\0' .. chosen.client] = nil
  end
  return grants
end

-- Granted or processing task -> back to the front of its client's FIFO (first lease expiry).
local function requeue(tid, t, reason)
  local q = k_q(t.lane, t.client)
  redis.call('LPUSH', q, t.sid)
  heads_add(t.lane, 0, t.client, true)  -- unless it is in line already: first in line again (it had its turn)
  redis.call('ZADD', k_queued(t.lane), num(t.seq, 0), t.sid)
  if t.cb ~= nil and t.cb ~= '' then redis.call('SADD', k_cbqueued(t.lane), t.sid) end
  redis.call('HINCRBY', K_KEYSTATS, 'q:' .. t.key, 1)
  redis.call('HSET', k_task(tid), 'state', 'queued', 'gpu', '', 'wait_from', NOW, 'error', reason, 'expires_at', '')
  if t.kind ~= 'callback' then redis.call('ZADD', K_EXPIRY, NOW + CFG.poll_ttl_ms, tid) end
end

local function ema(field, value)
  local old = tonumber(redis.call('HGET', K_DURATIONS, field))
  local new = value
  if old then new = old + CFG.alpha * (value - old) end
  redis.call('HSET', K_DURATIONS, field, new)
  redis.call('HINCRBY', K_DURATIONS, 'n:' .. field, 1)
end

local function task_table(tid)
  local t = hgetall(k_task(tid))
  if t.state == nil then return nil end
  return t
end
