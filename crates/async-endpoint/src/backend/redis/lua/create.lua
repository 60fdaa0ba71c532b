-- Stores a queued request and enqueues its job, atomically.
-- KEYS: record, queue stream[, idempotency key].
-- ARGV: task, params, deadline_ms, ttl_ms, id, created_ms, owner limit, owner digest, task limit
--   (limits '' when off), params digest (read only with an idempotency key), traceparent ('' none).
-- Returns ADMITTED; or OVER_OWNER_LIMIT / OVER_TASK_LIMIT having written nothing; or, when the
-- idempotency key exists, its entry ('<id> <created_ms> <params digest>') having written nothing
-- (a repeat of an admitted start is never refused by a limit).
-- The id is fresh for every start: a record under it already means this very call ran before
-- (a client library re-sent it after losing the reply, as redis-rs's cluster client may after a
-- failover). Admitted once, enqueued once.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return ADMITTED
end
if KEYS[3] then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return existing
  end
end
-- Pending limits: checked before anything is written (ids past their deadline do not count).
local owner_pending = ARGV[7] ~= '' and owner_set(ARGV[8])
local task_pending = ARGV[9] ~= '' and task_set(ARGV[1])
if owner_pending and not below_limit(owner_pending, ARGV[7], ARGV[6]) then
  return OVER_OWNER_LIMIT
end
if task_pending and not below_limit(task_pending, ARGV[9], ARGV[6]) then
  return OVER_TASK_LIMIT
end
if KEYS[3] then
  -- Kept for the request's TTL from creation, written in the same atomic step as the request.
  redis.call('SET', KEYS[3], ARGV[5] .. ' ' .. ARGV[6] .. ' ' .. ARGV[10], 'NX', 'PX', ARGV[4])
end
put_params(ARGV[2], ARGV[4], 't', ARGV[1], 's', QUEUED, 'd', ARGV[3], 'l', ARGV[4])
if owner_pending then
  join_pending(owner_pending, ARGV[3], ARGV[5], ARGV[4])
  redis.call('HSET', KEYS[1], 'w', ARGV[8])
end
if task_pending then
  join_pending(task_pending, ARGV[3], ARGV[5], ARGV[4])
  redis.call('HSET', KEYS[1], 'k', '1')
end
if ARGV[11] ~= '' then
  redis.call('HSET', KEYS[1], 'c', ARGV[11])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
-- Trim entries older than the TTL: their requests are past their deadlines (deadline < TTL), so
-- a delivery would only be skipped. Approximate (~) trimming frees whole stream nodes, cheaply.
-- ARGV[6] is the creation time (unix ms) from the web process: a clock skew of seconds only
-- shifts this approximate trim, whose horizon is the TTL.
local minid = tonumber(ARGV[6]) - tonumber(ARGV[4])
if minid < 0 then minid = 0 end
local new_queue = redis.call('EXISTS', KEYS[2]) == 0
redis.call('XADD', KEYS[2], 'MINID', '~', string.format('%d', minid), '*', 'i', ARGV[5])
if new_queue then
  -- From id 0, so this first entry is delivered too. A group made meanwhile by a worker is fine.
  redis.pcall('XGROUP', 'CREATE', KEYS[2], GROUP, '0')
end
-- The queue lives as long as its newest request could need it: an idle queue expires too.
redis.call('PEXPIRE', KEYS[2], ARGV[4])
-- On a cluster workers read shards without blocking: while one sleeps (its mark is set by
-- sweep.lua when it found the shard empty), announce the job on the shard's channel.
if CLUSTER and redis.call('EXISTS', shard_key('z', 'idle')) == 1 then
  redis.call(PUBLISH, shard_key('j', 'jobs'), ARGV[1])
end
return ADMITTED
