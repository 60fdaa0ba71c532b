-- Marks a running request retrying (between attempts); ignored otherwise. Announced only when a
-- process watches the request (`n`).
-- KEYS: record.  ARGV: channel, id.
local h = redis.call('HMGET', KEYS[1], 's', 'l', 'x', 'n')
if h[1] == RUNNING then
  redis.call('HSET', KEYS[1], 's', RETRYING)
  touch(h[3] or '', h[2])
  if h[4] then
    redis.call(PUBLISH, ARGV[1], ARGV[2])
  end
  return APPLIED
end
return UNCHANGED
