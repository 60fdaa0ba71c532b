-- Marks a running request retrying (between attempts); ignored otherwise.
-- KEYS: record.  ARGV: channel, id.
local h = redis.call('HMGET', KEYS[1], 's', 'l', 'x')
if h[1] == RUNNING then
  redis.call('HSET', KEYS[1], 's', RETRYING)
  touch(h[3] or '', h[2])
  redis.call(PUBLISH, ARGV[1], ARGV[2])
  return APPLIED
end
return UNCHANGED
