-- Redis Cluster: reads one shard's new jobs without blocking. Reads every task's stream in the
-- shard (creating a missing group on an existing stream); when none had anything, marks the
-- shard "a worker sleeps" so that the next start in it announces its job (create.lua). Marking
-- and reading are one atomic step, so a job is either read here or announced, never missed.
-- KEYS: the shard's sleep mark, then the shard's stream of each task (all one slot).
-- ARGV: group, consumer, count per stream, mark ms.
-- Returns {{task index (1-based), entry id, request id or '', prior deliveries}...}: at most
-- count entries per stream.
local out = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local r = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
      'STREAMS', KEYS[i], '>')
    if type(r) == 'table' and r.err then
      if string.match(r.err, '^%S+') ~= 'NOGROUP' then
        return r
      end
      redis.pcall('XGROUP', 'CREATE', KEYS[i], ARGV[1], '0')
      r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
        'STREAMS', KEYS[i], '>')
    end
    if r then
      for _, e in ipairs(r[1][2]) do
        local id, prior = entry_job(e[2])
        out[#out + 1] = {i - 1, e[1], id or '', prior}
      end
    end
  end
end
if #out == 0 then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[4])
end
return out
