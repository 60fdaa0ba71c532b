-- Writes the outcome unless the request is terminal (the first terminal state wins), and drops
-- the stream entry. Past the deadline the outcome becomes the timeout failure.
-- KEYS: record, queue stream.
-- ARGV: now_ms, timeout failure JSON, channel, id, group, receipt, DONE or FAILED, output or
--       failure.
-- Returns the status that stands (DONE or FAILED).
local h = redis.call('HMGET', KEYS[1], 's', 'd', unpack(terminal_fields))
drop_entry(ARGV[5], ARGV[6])
if not h[1] then
  return FAILED
end
if not unfinished(h[1]) then
  return h[1]
end
local r = record(h, 3)
if tonumber(ARGV[1]) > tonumber(h[2] or 0) then
  fail(r, ARGV[2], ARGV[3], ARGV[4])
  return FAILED
end
if ARGV[7] == DONE then
  unpend(ARGV[4], r)
  local x = put(r.x, 'o', ARGV[8], r.l, 's', DONE)
  x = drop_params(x)
  touch(x, r.l)
  announce(r, ARGV[3], ARGV[4])
  return DONE
end
fail(r, ARGV[8], ARGV[3], ARGV[4])
return FAILED
