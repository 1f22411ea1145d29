-- log: where a job's log stream ends, and a writer's batch appended to it. A
-- library, for the scripts that append to a log (append.lua, finish.lua, and
-- queue.lua's closing lines) and for status_read.lua.
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

-- Append a writer's batch (logstream.py) to the stream ``key``: ARGV from
-- index ``from`` on, one entry each, tagged with ``batch`` and written at
-- ``now_ms`` (epoch ms), the stream capped at about ``maxlen`` entries.
-- Returns the log's length in bytes afterwards, or as it is when the batch
-- was already in; and how many bytes this call appended (0 then).
--
-- Idempotence: a batch sent again (its first reply was lost, but the first call
-- may have run) is not appended again. A batch id is unique to one batch of one
-- writer, so the batch is in when an entry carries its id. Which entries to look
-- at: the last one (free: it is read for the offset anyway); and, when the log
-- is no longer where the writer's last acknowledged append left it (``expect``),
-- every entry from there on: its earlier try may be followed by someone else's
-- line (a closing line). In the usual case the log is where the writer expects
-- it and nothing more is read. Someone else's append in between does not
-- block the writer: a batch not found goes in at the end, as ever.
local function append_batch(key, batch, expect, maxlen, now_ms, from)
  local function has_batch(f)
    for j = 1, #f, 2 do
      if f[j] == 'b' and f[j + 1] == batch then return true end
    end
    return false
  end
  local offset, _, f = log_offset(key)
  if f then
    if batch ~= '' and has_batch(f) then return offset, 0 end
    local seen = tonumber(expect)
    if batch ~= '' and seen and seen ~= offset then
      for _, entry in ipairs(redis.call('XRANGE', key, string.format('%d-0', seen), '+')) do
        if has_batch(entry[2]) then return offset, 0 end
      end
    end
  end
  local start = offset
  for i = from, #ARGV do
    local chunk = ARGV[i]
    if #chunk > 0 then
      redis.call('XADD', key, 'MAXLEN', '~', maxlen, string.format('%d-1', offset),
                 'd', chunk, 't', now_ms, 'b', batch)
      offset = offset + #chunk
    end
  end
  return offset, offset - start
end
