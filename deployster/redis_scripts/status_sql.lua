-- status_sql: after a /status read served from SQL (status_read.lua said
-- where from), move the cursor to the end of the log, once.
-- KEYS: job
-- ARGV: nonce from_end
--   nonce: the read's; from_end: the byte offset the read started at.
-- Returns 1 when the cursor moved for this read (or a retry of it already
-- did), 0 when another read moved it first: those bytes are that read's.

local st = redis.call('HMGET', K_JOB, 'cursor_end', 'cursor_nonce')
if st[2] == NONCE and st[1] == 'end' then return 1 end
if (st[1] or '0') ~= FROM_END then return 0 end
redis.call('HSET', K_JOB, 'cursor_end', 'end', 'cursor_nonce', NONCE,
           'cursor_end_before', FROM_END)
return 1
