-- Starts an attempt, or says why not (and drops the stream entry).
-- KEYS: record, queue stream.
-- ARGV: now_ms, timeout failure JSON, channel, id, group, receipt, deliveries, max deliveries,
--       poison failure JSON.
-- Returns {attempt, params, deadline, traceparent ('' none)} to run, or SKIP_GONE (gone or
-- terminal), SKIP_TIMED_OUT (deadline passed), SKIP_POISONED (delivered too often).
-- The TTL is not re-applied: the record lives at least until its creation plus the TTL, which
-- is past its deadline (the endpoint checks deadline < TTL) and so past any begin, and its
-- token expires then too; terminal writes re-apply it.
-- Fields: s a d c, then terminal_fields (5-10), then params_fields (11-18).
local fields = {'s', 'a', 'd', 'c'}
for _, f in ipairs(terminal_fields) do fields[#fields + 1] = f end
for _, f in ipairs(params_fields) do fields[#fields + 1] = f end
local h, x = read(unpack(fields))
h = h or {}
if not unfinished(h[1]) then
  drop_entry(ARGV[5], ARGV[6])
  return SKIP_GONE
end
local r = record(h, 5, x)
if tonumber(ARGV[1]) > tonumber(h[3] or 0) then
  fail(r, ARGV[2], ARGV[3], ARGV[4])
  drop_entry(ARGV[5], ARGV[6])
  return SKIP_TIMED_OUT
end
if tonumber(ARGV[7]) > tonumber(ARGV[8]) then
  fail(r, ARGV[9], ARGV[3], ARGV[4])
  drop_entry(ARGV[5], ARGV[6])
  return SKIP_POISONED
end
local attempt = tonumber(h[2] or '0') + 1
redis.call('HSET', KEYS[1], 's', RUNNING, 'a', attempt)
announce(r, ARGV[3], ARGV[4])
return {attempt, joined_params(h, 11), h[3], h[4] or ''}
