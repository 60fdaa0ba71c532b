-- Takes over the pending entries of workers that died: consumers whose heartbeat key
-- (PREFIX:w:<consumer>, on a cluster PREFIX:w:{T}:<consumer> in the stream's shard, refreshed
-- by each live worker) is gone. A consumer found without one is first marked suspect
-- (PREFIX:s:<consumer>, likewise) and only taken over when it is still silent a grace
-- period later, so a live worker whose beat was late (Redis paused or slow for a moment, the key
-- expired on its wall clock) beats again first and keeps its jobs. At most COUNT entries.
-- KEYS: queue stream.  ARGV: this consumer, count, grace ms.
-- Returns {{entry id, request id, deliveries}...}. A missing group is answered with XINFO's own
-- NOGROUP error, returned as it came; a missing stream (expired meanwhile: XINFO would say only
-- "no such key") with a NOGROUP error too, so the worker looks its queues up again either way.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOGROUP the queue stream is gone')
end
local info = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], GROUP)
if info.err then
  return info
end
local left = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])
local claimed = {}
for _, c in ipairs(info) do
  if left <= 0 then
    break
  end
  local name, pending = false, 0
  for i = 1, #c, 2 do
    if c[i] == 'name' then
      name = c[i + 1]
    elseif c[i] == 'pending' then
      pending = c[i + 1]
    end
  end
  if name and name ~= ARGV[1] and pending > 0
      and redis.call('EXISTS', shard_key('w', name)) == 0 then
    local suspect = shard_key('s', name)
    local ttl = redis.call('PTTL', suspect)
    if ttl < 0 then
      redis.call('SET', suspect, '1', 'PX', grace * 2)
    elseif ttl <= grace then
      for _, p in ipairs(redis.call('XPENDING', KEYS[1], GROUP, '-', '+', left, name)) do
        local got = redis.call('XCLAIM', KEYS[1], GROUP, ARGV[1], 0, p[1])
        local id, prior = entry_job(got[1] and got[1][2])
        if id then
          claimed[#claimed + 1] = {p[1], id, p[4] + 1 + prior}
          left = left - 1
        else
          -- Deleted from the stream (or not a job of ours): nothing to run.
          redis.call('XACK', KEYS[1], GROUP, p[1])
          redis.call('XDEL', KEYS[1], p[1])
        end
      end
    end
  end
end
return claimed
