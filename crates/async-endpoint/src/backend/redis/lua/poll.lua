-- Reads a request; an unfinished one past its deadline becomes a timeout failure first. With
-- ARGV[5] '1' (the polling process watches the request) an unfinished record is marked (`n`), so
-- later writes to it are announced.
-- KEYS: record.  ARGV: now_ms, timeout failure JSON, channel, id, '1' to mark or ''.
-- Returns nil (unknown) or {{task, status, attempts, progress, output, failure, deadline},
-- APPLIED if it timed out just now else UNCHANGED}: the fields as the poll's HMGET reads them.
local h, x = read('t', 's', 'a', 'g', 'o', 'f', 'd', unpack(terminal_fields))
if not h or not h[1] then
  return false
end
local r = record(h, 8, x)
local timed_out = UNCHANGED
if unfinished(h[2]) and tonumber(ARGV[1]) > tonumber(h[7] or 0) then
  fail(r, ARGV[2], ARGV[3], ARGV[4])
  h[2] = FAILED
  h[6] = ARGV[2]
  timed_out = APPLIED
elseif unfinished(h[2]) and ARGV[5] == '1' and not r.n then
  redis.call('HSET', KEYS[1], 'n', '1')
end
return {{h[1], h[2], h[3], h[4], h[5], h[6], h[7]}, timed_out}
