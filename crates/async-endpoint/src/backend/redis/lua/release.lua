-- Hands a job back (graceful shutdown): if this consumer still owns the entry, it is acknowledged
-- and re-added at the tail, where any blocked worker gets it at once. The copy carries the
-- deliveries so far (minus this one, which did not run to the end), so poison jobs still stop.
-- KEYS: queue stream.  ARGV: group, receipt, id, prior deliveries, consumer.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[5] then
  return UNCHANGED
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'i', ARGV[3], 'n', ARGV[4])
return APPLIED
