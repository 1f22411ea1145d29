-- release: an operator frees a project's lock, if the holder they saw still
-- holds it (compare-and-delete: a newer holder's lock is never deleted), and
-- wakes the queue.
-- KEYS: lock events notify outbox
-- ARGV: owner event project now_ms actor
--   owner: the job id the operator saw holding the lock; event: the JSON
--   'released' event to publish on KEYS events once it is freed; notify,
--   outbox, project, now_ms: see outbox.lua; actor: the operator, for the
--   'lock_released' event there ('' writes none: not an operator's act).
-- Returns 1 when it was freed, 0 when ``owner`` no longer held it (nothing
-- changed, nothing published).

if not lock_release(K_LOCK, OWNER) then return 0 end
redis.call('PUBLISH', K_EVENTS, EVENT)
if ACTOR ~= '' then outbox_add('lock_released', OWNER, ACTOR) end
return 1
