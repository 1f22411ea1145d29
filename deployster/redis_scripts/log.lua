-- log: where a job's log stream ends. A library, for the scripts that append
-- to a log (append.lua, and queue.lua's closing lines) and for status_read.lua.
--
-- Every entry's id is '<offset>-1', the byte offset of its first byte in the
-- whole log (see append.lua), so the end is the last entry's offset plus the
-- length of its text ('d'): no writer keeps the length anywhere else.

-- The byte offset after an entry ({id, fields}) and its text (nil when none).
local function entry_end(entry)
  local offset = tonumber(string.match(entry[1], '^(%d+)'))
  local text = nil
  local f = entry[2]
  for j = 1, #f, 2 do
    if f[j] == 'd' then
      text = f[j + 1]
      offset = offset + #text
    end
  end
  return offset, text
end

-- The log's length in bytes (the next entry's offset), the last entry's text
-- (nil when none) and its fields (nil when the stream is empty).
local function log_offset(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if not last then return 0, nil, nil end
  local offset, text = entry_end(last)
  return offset, text, last[2]
end
