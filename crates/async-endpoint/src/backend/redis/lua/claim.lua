-- Claims entries idle longer than the bound (their worker died or hung), at most COUNT of them.
-- KEYS: queue stream.  ARGV: group, consumer, min idle ms, start id, count.
-- Returns {next start id, {{entry id, request id, deliveries}...}}.
-- A missing stream or group is answered with XAUTOCLAIM's own NOGROUP error, returned as it
-- came, so the caller can tell it by its code whatever Redis version wraps script errors.
local r = redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
if r.err then
  return r
end
local claimed = {}
for _, e in ipairs(r[2]) do
  if e[2] then
    local id, prior = entry_job(e[2])
    if id then
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
      local count = 1
      if p[1] then
        count = p[1][4]
      end
      claimed[#claimed + 1] = {e[1], id, count + prior}
    else
      redis.call('XACK', KEYS[1], ARGV[1], e[1])
      redis.call('XDEL', KEYS[1], e[1])
    end
  end
end
return {r[1], claimed}
