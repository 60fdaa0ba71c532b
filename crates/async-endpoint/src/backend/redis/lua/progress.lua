-- Saves progress of a running or retrying request; ignored otherwise.
-- KEYS: record.  ARGV: progress JSON, channel, id.
local h = redis.call('HMGET', KEYS[1], 's', 'l', 'x')
if h[1] == RUNNING or h[1] == RETRYING then
  touch(put(h[3] or '', 'g', ARGV[1], h[2]), h[2])
  redis.call(PUBLISH, ARGV[2], ARGV[3])
  return APPLIED
end
return UNCHANGED
