-- Starts an attempt, or says why not (and drops the stream entry).
-- KEYS: record, queue stream.
-- ARGV: now_ms, timeout failure JSON, channel, id, group, receipt, deliveries, max deliveries,
--       poison failure JSON.
-- Returns {attempt, params, deadline, traceparent ('' none)} to run, or SKIP_GONE (gone or
-- terminal), SKIP_TIMED_OUT
-- (deadline passed), SKIP_POISONED (delivered too often).
local h, x = read('s', 'a', 'p', 'd', 'l', 'c')
h = h or {}
if not unfinished(h[1]) then
  drop_entry(ARGV[5], ARGV[6])
  return SKIP_GONE
end
if tonumber(ARGV[1]) > tonumber(h[4] or 0) then
  fail(x, ARGV[2], h[5], ARGV[3], ARGV[4])
  drop_entry(ARGV[5], ARGV[6])
  return SKIP_TIMED_OUT
end
if tonumber(ARGV[7]) > tonumber(ARGV[8]) then
  fail(x, ARGV[9], h[5], ARGV[3], ARGV[4])
  drop_entry(ARGV[5], ARGV[6])
  return SKIP_POISONED
end
local attempt = tonumber(h[2] or '0') + 1
redis.call('HSET', KEYS[1], 's', RUNNING, 'a', attempt)
touch(x, h[5])
redis.call(PUBLISH, ARGV[3], ARGV[4])
return {attempt, h[3] or '', h[4], h[6] or ''}
