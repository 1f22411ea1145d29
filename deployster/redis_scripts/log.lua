-- log: where a job's log stream ends. A library, for the scripts that append
-- to a log (append.lua, and queue.lua's closing lines).
--
-- Every entry's id is '<offset>-1', the byte offset of its first byte in the
-- whole log (see append.lua), so the end is the last entry's offset plus the
-- length of its text ('d'): no writer keeps the length anywhere else.

-- The log's length in bytes (the next entry's offset), the last entry's text
-- (nil when none) and its fields (nil when the stream is empty).
local function log_offset(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if not last then return 0, nil, nil end
  local offset = tonumber(string.match(last[1], '^(%d+)'))
  local f = last[2]
  local text = nil
  for j = 1, #f, 2 do
    if f[j] == 'd' then
      text = f[j + 1]
      offset = offset + #text
    end
  end
  return offset, text, f
end
