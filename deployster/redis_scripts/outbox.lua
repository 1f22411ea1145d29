-- outbox: a job event for the notifications and GitHub deployments of its
-- project, written in the same step as the change it tells of, so no restart
-- can lose it (deployster/notify/outbox.py delivers it). A library; the
-- scripts that include it declare the keys notify and outbox and the
-- arguments project and now_ms.
--   notify: project id (or '*', for every project without an entry of its
--   own) -> the events its targets want, as ',queued,complete,'; outbox: the
--   stream of events not yet turned into deliveries.
-- A project whose targets want none of this event pays one HMGET, no write;
-- a project that wants it, one XADD. The stream is capped (approximately) at
-- OUTBOX_CAP entries: a server that delivers takes them out at once, so only
-- a Redis no deliverer has read for a very long time reaches it.

local OUTBOX_CAP = 100000

-- Write event ``event`` of job ``id`` (``actor``: who did it, for an operator's act).
local function outbox_add(event, id, actor)
  local wanted = redis.call('HMGET', K_NOTIFY, PROJECT, '*')
  local list = wanted[1] or wanted[2]
  if not list or not string.find(list, ',' .. event .. ',', 1, true) then return end
  if actor and actor ~= '' then
    redis.call('XADD', K_OUTBOX, 'MAXLEN', '~', OUTBOX_CAP, '*', 'e', event, 'j', id,
               'p', PROJECT, 't', NOW_MS, 'a', actor)
  else
    redis.call('XADD', K_OUTBOX, 'MAXLEN', '~', OUTBOX_CAP, '*', 'e', event, 'j', id,
               'p', PROJECT, 't', NOW_MS)
  end
end
