-- Makes sure the task's stream has the consumer group. A stream this creates expires after
-- ARGV[2] ms unless an enqueue (which re-applies the request TTL) comes first, so a queue nobody
-- uses leaves no key behind once its processes stop.
-- KEYS: queue stream.  ARGV: group, expiry of a stream created here (ms).
-- Returns 1 when the group was created, 0 when it already existed.
local created_stream = redis.call('EXISTS', KEYS[1]) == 0
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(ok) == 'table' and ok.err then
  if string.find(ok.err, 'BUSYGROUP', 1, true) then
    return 0
  end
  return redis.error_reply(ok.err)
end
if created_stream then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
