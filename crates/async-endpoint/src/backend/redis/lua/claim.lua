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
  local fields = e[2]
  if fields then
    local id, prior = false, 0
    for i = 1, #fields, 2 do
      if fields[i] == 'i' then
        id = fields[i + 1]
      elseif fields[i] == 'n' then
        prior = tonumber(fields[i + 1]) or 0
      end
    end
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
