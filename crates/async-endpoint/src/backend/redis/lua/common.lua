-- Shared by every record script. Record hash fields (kept short: they are stored per request):
--   t task name   s status (q queued, r running, y retrying, d done, f failed)   a attempts
--   p params (dropped once terminal)   g progress JSON   o output JSON   f failure JSON
--   d deadline, unix ms   l TTL, ms (re-applied with PEXPIRE on every write)
-- Every script touches a fixed number of keys and entries: nothing here grows with a backlog.

-- Turns the record in KEYS[1] into a failure and tells the waiters.
local function fail(failure, ttl, channel, id)
  redis.call('HSET', KEYS[1], 's', 'f', 'f', failure)
  redis.call('HDEL', KEYS[1], 'p')
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PUBLISH', channel, id)
end

-- Acknowledges and deletes a stream entry (KEYS[2]) whose record reached a terminal state.
local function drop_entry(group, receipt)
  if receipt ~= '' then
    redis.call('XACK', KEYS[2], group, receipt)
    redis.call('XDEL', KEYS[2], receipt)
  end
end

local function unfinished(s)
  return s == 'q' or s == 'r' or s == 'y'
end
