-- upgrade_queue: move a project's queue from the list older versions kept
-- (KEYS legacy) into the sorted set (KEYS queue), in one step: order kept,
-- behind whatever the set holds; only jobs still queued; the list deleted.
-- Running it again, or after a claim or an enqueue already moved the list
-- (both do: see queue.lua's queue_upgrade), changes nothing.
-- KEYS: lock queue fence queues running dirty events current sigs job feed seq legacy durations notify outbox metrics
-- ARGV: job_prefix project now runner log_prefix now_ms byref_prefix
--   (see queue.lua; job is a placeholder, runner '')
-- Returns how many jobs moved.

return queue_upgrade()
