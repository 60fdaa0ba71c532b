-- Stores a queued request and enqueues its job, atomically.
-- KEYS: record, queue stream[, idempotency key].
-- ARGV: task, params, deadline_ms, ttl_ms, id, created_ms[, params digest].
-- With an idempotency key that exists, nothing is written: the entry ('<id> <created_ms>
-- <params digest>') is returned instead. Otherwise the entry is written with the request's TTL
-- (SET NX PX: kept from creation), in the same atomic step as the request.
if KEYS[3] then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return existing
  end
  redis.call('SET', KEYS[3], ARGV[5] .. ' ' .. ARGV[6] .. ' ' .. ARGV[7], 'NX', 'PX', ARGV[4])
end
redis.call('HSET', KEYS[1], 't', ARGV[1], 's', QUEUED, 'p', ARGV[2], 'd', ARGV[3], 'l', ARGV[4])
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
return APPLIED
