-- Shared by the scripts that read queue entries (claim, takeover, sweep).
-- A queue entry's request id (field 'i'; false when absent) and the deliveries its request had
-- before it was queued again (field 'n'; 0 when absent), from the entry's field list.
local function entry_job(fields)
  local id, prior = false, 0
  if fields then
    for j = 1, #fields, 2 do
      if fields[j] == 'i' then
        id = fields[j + 1]
      elseif fields[j] == 'n' then
        prior = tonumber(fields[j + 1]) or 0
      end
    end
  end
  return id, prior
end
