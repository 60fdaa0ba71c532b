-- Saves progress of a running or retrying request; ignored otherwise. Announced only when a
-- process watches the request (`n`).
-- KEYS: record.  ARGV: progress JSON, channel, id.
local h = redis.call('HMGET', KEYS[1], 's', 'l', 'x', 'n')
if h[1] == RUNNING or h[1] == RETRYING then
  touch(put(h[3] or '', 'g', ARGV[1], h[2]), h[2])
  if h[4] then
    redis.call(PUBLISH, ARGV[2], ARGV[3])
  end
  return APPLIED
end
return UNCHANGED
