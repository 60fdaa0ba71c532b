-- Makes sure an existing task stream has the consumer group. Workers never create a stream: a
-- queue exists only while something was enqueued within the TTL, so no key outlives its use.
-- KEYS: queue stream.  ARGV: group.
-- Returns GROUP_CREATED, GROUP_EXISTED, or GROUP_NO_STREAM when there is no stream.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return GROUP_NO_STREAM
end
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0')
if type(ok) == 'table' and ok.err then
  -- An error reply starts with its code.
  if string.match(ok.err, '^%S+') == 'BUSYGROUP' then
    return GROUP_EXISTED
  end
  return redis.error_reply(ok.err)
end
return GROUP_CREATED
