-- Makes sure an existing task stream has the consumer group. Workers never create a stream: a
-- queue exists only while something was enqueued within the TTL, so no key outlives its use.
-- KEYS: queue stream.  ARGV: group.
-- Returns 1 when the group was created, 0 when it already existed, -1 when there is no stream.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0')
if type(ok) == 'table' and ok.err then
  if string.find(ok.err, 'BUSYGROUP', 1, true) then
    return 0
  end
  return redis.error_reply(ok.err)
end
return 1
