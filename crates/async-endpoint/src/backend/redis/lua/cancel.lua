-- Cancels a request: an unfinished one becomes the cancelled failure (params dropped, TTL
-- re-applied, PUBLISH so waiting polls and the worker running it see it in every process: a
-- cancel is always announced, whether or not a process marked the record as watched).
-- The first terminal state wins: a terminal record is returned unchanged, and an unfinished one
-- past its deadline becomes the timeout failure instead (as poll.lua does). Its stream entry is
-- left alone: a worker that fetches it skips it in begin.lua (which drops it), and a worker
-- running it drops it in finish.lua.
-- KEYS: record.  ARGV: now_ms, timeout failure JSON, cancelled failure JSON, channel, id.
-- Returns nil (unknown) or {{task, status, attempts, progress, output, failure, deadline},
-- APPLIED if it wrote (cancelled or timed out) just now else UNCHANGED}, like poll.lua.
local h, x = read('t', 's', 'a', 'g', 'o', 'f', 'd', unpack(terminal_fields))
if not h or not h[1] then
  return false
end
local wrote = UNCHANGED
if unfinished(h[2]) then
  local failure = ARGV[3]
  if tonumber(ARGV[1]) > tonumber(h[7] or 0) then
    failure = ARGV[2]
  end
  fail(record(h, 8, x), failure, ARGV[4], ARGV[5], true)
  h[2] = FAILED
  h[6] = failure
  wrote = APPLIED
end
return {{h[1], h[2], h[3], h[4], h[5], h[6], h[7]}, wrote}
