"""Every Redis key and channel deployster uses, in one place.

Everything but the lock sits under one prefix (``deployster:``); the lock keeps the
seed's name, ``lock:deploy:<projectId>``, so tools written against the seed still
see it. A namespace (``DEPLOYSTER_NAMESPACE``) prefixes both, for several
instances sharing one Redis.

| key                         | type   | holds                                         |
|-----------------------------|--------|-----------------------------------------------|
| lock:deploy:<project>       | string | the owning job id, with a TTL                 |
| deployster:job:<id>         | hash   | the live job record (status, cursor, fence…)  |
| deployster:log:<id>         | stream | the job's output, one entry per chunk         |
| deployster:waiting:<project>| zset   | queued job ids, scored by enqueue order (FIFO)|
| deployster:seq:<project>    | string | the queue's enqueue counter (the scores)      |
| deployster:byref:<project>:<ref> | set | queued job ids of one ref (supersede)     |
| deployster:queue:<project>  | list   | legacy: the queue before it was a zset        |
| deployster:queues           | set    | projects whose queue may be non-empty         |
| deployster:running          | hash   | running job id -> runner id                   |
| deployster:fence:<project>  | string | fencing counter, bumped at every claim        |
| deployster:current:<project>| string | the job that claimed the lock last            |
| deployster:durations:<project>| list | recent complete jobs' run times, ms, newest first |
| deployster:sigs:<project>   | hash   | request signature -> queued job (dedupe)      |
| deployster:runner:<id>      | string | a live dispatcher's identity, short TTL       |
| deployster:runners          | zset   | runner id -> announcement expiry (a hint)     |
| deployster:nodes            | hash   | node name -> its last announcement (JSON)     |
| deployster:dirty            | hash   | job id -> version not yet written to SQL      |
| deployster:metrics:<project>| hash   | the project's counters (ends, durations, log) |
| deployster:metrics          | hash   | server-wide counters (the hand-off histogram) |
| deployster:metrics:notify   | hash   | notifications delivered / failed, by kind     |
| deployster:projects:version | string | bumped on every project change (cache key)    |
| deployster:health           | string | the health check's write probe, short TTL     |
| deployster:events           | pubsub | events a dispatcher acts on: released, finished… |
| deployster:feed             | pubsub | for watchers only: started, enqueued+started, history |
| deployster:notify:routes    | hash   | project id (or '*') -> ',events its targets want,' |
| deployster:outbox           | stream | job events for notifications, not yet expanded |
| deployster:notify:due       | zset   | delivery lane -> when its head is tried next (ms) |
| deployster:notify:lane:<lane> | list | a lane's delivery ids, in order (one target, one job) |
| deployster:notify:d:<id>    | hash   | one delivery: target, event, body, tries          |
| deployster:github:<job>     | string | the GitHub deployment id of a job, with a TTL     |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    namespace: str = ""

    @property
    def prefix(self) -> str:
        return f"{self.namespace}:deployster:" if self.namespace else "deployster:"

    @property
    def lock_prefix(self) -> str:
        return f"{self.namespace}:lock:deploy:" if self.namespace else "lock:deploy:"

    # -- per project
    def lock(self, project_id: int | str) -> str:
        return f"{self.lock_prefix}{project_id}"

    @property
    def queue_prefix(self) -> str:
        return f"{self.prefix}waiting:"

    def queue(self, project_id: int | str) -> str:
        """The project's queue: a sorted set of job ids scored by ``queue_seq``."""
        return f"{self.queue_prefix}{project_id}"

    def queue_seq(self, project_id: int | str) -> str:
        return f"{self.prefix}seq:{project_id}"

    def byref_prefix(self, project_id: int | str) -> str:
        return f"{self.prefix}byref:{project_id}:"

    def byref(self, project_id: int | str, ref: str) -> str:
        """The project's queued job ids of one ref: what ``supersede`` replaces."""
        return f"{self.byref_prefix(project_id)}{ref}"

    def legacy_queue(self, project_id: int | str) -> str:
        """Legacy: the queue as a list (FIFO), as deployster kept it before the
        sorted set. Only read, to move its jobs over (``JobQueue.upgrade``)."""
        return f"{self.prefix}queue:{project_id}"

    def fence(self, project_id: int | str) -> str:
        return f"{self.prefix}fence:{project_id}"

    @property
    def current_prefix(self) -> str:
        return f"{self.prefix}current:"

    def current(self, project_id: int | str) -> str:
        return f"{self.current_prefix}{project_id}"

    @property
    def durations_prefix(self) -> str:
        return f"{self.prefix}durations:"

    def durations(self, project_id: int | str) -> str:
        """How long the project's recent complete jobs ran (ms, newest first):
        what start estimates are made of (``deployster/estimate.py``)."""
        return f"{self.durations_prefix}{project_id}"

    def signatures(self, project_id: int | str) -> str:
        return f"{self.prefix}sigs:{project_id}"

    @property
    def metrics_prefix(self) -> str:
        return f"{self.prefix}metrics:"

    def project_metrics(self, project_id: int | str) -> str:
        """The project's counters for ``GET /metrics``: a hash (its fields:
        ``deployster/metrics.py``), never reset but with the project."""
        return f"{self.metrics_prefix}{project_id}"

    @property
    def runner_prefix(self) -> str:
        return f"{self.prefix}runner:"

    def runner(self, runner_id: str) -> str:
        return f"{self.runner_prefix}{runner_id}"

    # -- per job
    @property
    def job_prefix(self) -> str:
        return f"{self.prefix}job:"

    def job(self, job_id: str) -> str:
        return f"{self.job_prefix}{job_id}"

    @property
    def log_prefix(self) -> str:
        return f"{self.prefix}log:"

    def log(self, job_id: str) -> str:
        return f"{self.log_prefix}{job_id}"

    # -- global
    @property
    def queues(self) -> str:
        return f"{self.prefix}queues"

    @property
    def running(self) -> str:
        return f"{self.prefix}running"

    @property
    def runners(self) -> str:
        """Every runner that announced itself lately: how a reader finds the
        ``runner`` keys without scanning Redis."""
        return f"{self.prefix}runners"

    @property
    def nodes(self) -> str:
        """Every node (host) that ever served this Redis: name -> its last
        announcement (deployster/fleet.py)."""
        return f"{self.prefix}nodes"

    @property
    def dirty(self) -> str:
        return f"{self.prefix}dirty"

    @property
    def metrics(self) -> str:
        """Server-wide counters for ``GET /metrics`` (the hand-off histogram)."""
        return f"{self.prefix}metrics"

    @property
    def notify_metrics(self) -> str:
        """Notification attempts, a hash ``<kind>:delivered`` / ``<kind>:failed``
        -> count, incremented by ``notify_settle.lua`` as each attempt is
        settled (``metrics.notification_counter``)."""
        return f"{self.metrics_prefix}notify"

    @property
    def projects_version(self) -> str:
        return f"{self.prefix}projects:version"

    @property
    def health(self) -> str:
        return f"{self.prefix}health"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def feed(self) -> str:
        # Kept off ``events``: at hundreds of deploys a second a server parsing
        # its own per-request events was a twentieth of its CPU.
        return f"{self.prefix}feed"

    # -- notifications (notify/outbox.py): written in the queue scripts' steps
    @property
    def notify_routes(self) -> str:
        """Project id (or ``*``) -> the events its targets want, as ``,a,b,``:
        what the queue scripts read before writing to ``outbox``."""
        return f"{self.prefix}notify:routes"

    @property
    def outbox(self) -> str:
        return f"{self.prefix}outbox"

    @property
    def notify_due(self) -> str:
        return f"{self.prefix}notify:due"

    @property
    def notify_lane_prefix(self) -> str:
        return f"{self.prefix}notify:lane:"

    def notify_lane(self, lane: str) -> str:
        return f"{self.notify_lane_prefix}{lane}"

    @property
    def notify_delivery_prefix(self) -> str:
        return f"{self.prefix}notify:d:"

    def notify_delivery(self, delivery_id: str) -> str:
        return f"{self.notify_delivery_prefix}{delivery_id}"

    def github_deployment(self, job_id: str) -> str:
        """The id of the GitHub deployment made for a job (its statuses attach to it)."""
        return f"{self.prefix}github:{job_id}"
