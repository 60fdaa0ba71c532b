-- Deletes consumers that own no pending entry and have been idle longer than the bound (left
-- behind by exited processes; names are unique per process, so they would pile up). Deleting a
-- live consumer with nothing pending is harmless: its next read re-creates it.
-- KEYS: queue stream.  ARGV: group, min idle ms.
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle = false, 1, 0
  for i = 1, #c, 2 do
    if c[i] == 'name' then
      name = c[i + 1]
    elseif c[i] == 'pending' then
      pending = c[i + 1]
    elseif c[i] == 'idle' then
      idle = c[i + 1]
    end
  end
  if name and pending == 0 and idle > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    n = n + 1
  end
end
return n
