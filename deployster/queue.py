"""The per-project FIFO of jobs waiting for the lock, and the hand-off.

State changes that must not interleave (enqueue + maybe start, finish + release +
start the next) are single Lua scripts (``redis_scripts/enqueue.lua``,
``claim.lua``, ``finish.lua``, ``cancel.lua``, sharing ``queue.lua``): Redis runs
each atomically, so two servers, or a server and the dashboard, can never start
two jobs of a project or start one job twice. A release publishes an event;
whoever runs a dispatcher claims the next job at once, no polling.

A queue is a sorted set scored by a per-project enqueue counter, beside one set
of queued ids per ref (docs/redis.md#the-queue): no request or refresh does
work that grows with the queue (the head, a position, the same-ref jobs, the
length and a window of it are each a log-time or constant-time read).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import cast

from .clock import iso
from .errors import QueueFull
from .estimate import DURATIONS_KEPT, StartEstimate
from .keys import Keys
from .logstream import MAXLEN as LOG_MAXLEN
from .logstream import LastBatch
from .models import Job, JobStatus
from .redis_conn import Redis
from .redis_scripts import Scripts

# Seconds a client is told to wait when a queue is full: about one short deploy.
QUEUE_FULL_RETRY_AFTER = 30


@dataclass(frozen=True)
class EnqueueResult:
    job_id: str  # the job answering the request (an identical queued one, if any)
    started: str | None  # the job this call started (may be an older queued one)
    position: int  # 1-based place in the queue; 0 once started
    duplicate: bool = False  # an identical request was already queued
    project: str = ""  # the project's name, for the caller's log line

    @property
    def queued(self) -> bool:
        return self.position > 0


@dataclass(frozen=True)
class FinishResult:
    ended: bool
    next_job: str | None
    # The next job's record as finish.lua read it when it claimed it (None:
    # not read; read it apart), in the shape HGETALL gives.
    next_record: dict[str, str] | None = None


class JobQueue:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = Scripts.of(redis, keys)

    async def enqueue(
        self, job: Job, *, runner: str | None, policy: str = "fifo", cap: int = 0
    ) -> EnqueueResult:
        """Store ``job`` at the tail of its project's queue.

        With ``runner`` set and the lock free, the head of the queue is started
        in the same step (the caller must then run it); without, the job waits
        for a dispatcher. A request identical to a still-queued job (same
        commit, ref and commands) is answered with that job instead; with the
        ``supersede`` policy older queued jobs for the same ref are replaced.
        With ``cap`` jobs already waiting, ``QueueFull`` is raised and nothing stored.
        """
        job.status = JobStatus.QUEUED
        job.queued_at = job.queued_at or iso()
        signature = job.signature()
        # The commands as sent, if kept, come last (see Job.to_redis).
        fields = json.dumps({"signature": signature, **job.to_redis()})
        # Sent in call order (no await before this): see ScriptBatcher.
        claimed, position, answer = await self.scripts.enqueue(
            project_id=job.project_id, runner=runner or "", job_id=job.id, policy=policy,
            signature=signature, fields=fields, cap=cap,
        )
        if int(position) < 0:
            raise QueueFull(
                f"project {job.project!r} already has {cap} deploys waiting (the cap, "
                "DEPLOYSTER_MAX_QUEUE); nothing was queued, retry later",
                retry_after=QUEUE_FULL_RETRY_AFTER,
            )
        return EnqueueResult(answer, claimed or None, int(position), duplicate=answer != job.id)

    async def claim(self, project_id: int, runner: str) -> str | None:
        """Start the next queued job of ``project_id`` if its lock is free."""
        claimed = await self.scripts.claim(project_id=project_id, runner=runner)
        return claimed or None

    async def finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        reason: str | None = None,
        exit_code: int | None = None,
        runner: str | None = None,
        closing: str = "",
        nonce: str | None = None,
        last_output: LastBatch | None = None,
    ) -> FinishResult:
        """Record the end of ``job``, release its lock, start the next job.

        ``closing``: the job's last log line (without ``[deployster] ``) for a
        caller that is not its runner; the runner writes its own. ``nonce``
        names this finish: a caller retrying after an outage passes the same
        one and gets the first call's answer if that call ran after all.
        ``last_output``: the runner's last batch of output (``LogWriter.seal``),
        appended in the same step, before the end is recorded.
        """
        batch = last_output or LastBatch("", [], 0)
        ended, nxt, record = await self.scripts.finish(
            project_id=job.project_id, runner=runner or "", job_id=job.id, fence=job.fence,
            status=status.value, reason=reason or "",
            exit_code="" if exit_code is None else str(exit_code), closing=closing,
            nonce=nonce or uuid.uuid4().hex, batch=batch.id, expect=batch.expect,
            maxlen=LOG_MAXLEN, chunks=batch.chunks,
        )
        fields = dict(zip(record[::2], record[1::2], strict=True)) if record else None
        return FinishResult(bool(ended), nxt or None, fields)

    async def cancel(self, job: Job) -> str:
        """Cancel ``job``; returns its status before the call ('' if unknown).

        ``queued``: it left the queue and ended cancelled. ``running``: its runner
        was asked to stop (the caller may wait for the end). Anything else: it
        had already finished and nothing changed.
        """
        return cast(str, await self.scripts.cancel(
            project_id=job.project_id, job_id=job.id, nonce=uuid.uuid4().hex,
        ))

    async def queued_ids(self, project_id: int) -> list[str]:
        """Every queued job id, head first (tests and tools; readers that show
        a queue take a ``window``)."""
        return [str(i) for i in await self.redis.zrange(self.keys.queue(project_id), 0, -1)]

    async def window(self, project_id: int, limit: int) -> tuple[list[str], int]:
        """The first ``limit`` queued job ids, head first, and how many are
        queued: one round trip, whatever the queue's length."""
        key = self.keys.queue(project_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrange(key, 0, limit - 1)
            pipe.zcard(key)
            ids, total = await pipe.execute()
        return [str(i) for i in ids], int(total)

    async def position(self, project_id: int, job_id: str) -> int | None:
        """1-based place in the queue; None when the job is not in it."""
        rank = await self.redis.zrank(self.keys.queue(project_id), job_id)
        return None if rank is None else cast(int, rank) + 1

    async def projects_with_queue(self) -> list[int]:
        return [int(p) for p in await self.redis.smembers(self.keys.queues)]

    async def length(self, project_id: int) -> int:
        return cast(int, await self.redis.zcard(self.keys.queue(project_id)))

    async def upgrade(self) -> int:
        """Move every queue an older deployster kept as a list into its sorted
        set (``upgrade_queue.lua``, atomic per project, order kept, a no-op the
        second time); returns how many jobs moved. Every non-empty list's
        project is in ``queues`` (the list's scripts added it with each push and
        dropped it only once the list was empty), so those are the ones visited.
        A dispatcher runs it at start; claims and enqueues also move a list an
        older server still pushes to (see ``queue.lua``)."""
        projects = await self.projects_with_queue()
        if not projects:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for project_id in projects:
                await self.scripts.upgrade_queue(project_id=project_id, client=pipe)
            moved = await pipe.execute()
        return sum(int(n) for n in moved)

    async def forget(self, project_id: int) -> None:
        """Delete what Redis keeps beside a removed project's queue: its
        request signatures, fencing counter, last claimed job, enqueue counter,
        counters (``GET /metrics``) and any list an older version left. Call it
        once the project's jobs have ended: its queue and its per-ref sets,
        empty by then (each job's end took it out of both), are gone already
        (Redis drops an empty key), and ``queues`` no longer names it."""
        await self.redis.delete(self.keys.signatures(project_id), self.keys.fence(project_id),
                                self.keys.current(project_id), self.keys.queue_seq(project_id),
                                self.keys.legacy_queue(project_id), self.keys.durations(project_id),
                                self.keys.project_metrics(project_id))

    async def wait(self, project_id: int) -> StartEstimate:
        """What the project's queued jobs wait for (``queue_wait.lua``): turn
        it into seconds for a place with ``StartEstimate.starts_in``."""
        typical, remaining = await self.scripts.queue_wait(project_id=project_id)
        return StartEstimate.from_reply(typical, remaining)

    async def learn_durations(self, runs_ms: dict[int, list[int]]) -> None:
        """Give projects that have no recent run times in Redis (an upgrade
        from a version that kept none, a Redis that lost its data) those from
        the SQL history: project id -> run times in ms, newest first. A project
        that has some keeps them (they are as new or newer)."""
        if not runs_ms:
            return
        ids = list(runs_ms)
        async with self.redis.pipeline(transaction=False) as pipe:
            for project_id in ids:
                pipe.exists(self.keys.durations(project_id))
            present = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for project_id, there in zip(ids, present, strict=True):
                runs = runs_ms[project_id][:DURATIONS_KEPT]
                if not there and runs:
                    pipe.rpush(self.keys.durations(project_id), *runs)
            await pipe.execute()
