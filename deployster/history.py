"""Copying live job state from Redis into the SQL history.

Every state change bumps the job's entry in the ``dirty`` hash (inside the same
Lua script that made the change). The writer upserts those jobs in batches —
with the full log once a job has finished — and clears an entry only if its
version did not move meanwhile (``redis_scripts/settle.lua``), so no change is
ever lost and a crash merely delays the copy. Only then do the job's Redis keys
get an expiry.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from . import events, store
from .db import migrate, schema_version
from .logstream import read_full_log
from .outages import classify, is_schema_missing
from .pruning import DAY, prune_history
from .service import Deployster

log = logging.getLogger("deployster.history")

BATCH = 200
PRUNE_EVERY = 3600.0  # seconds between history prunes (when DEPLOYSTER_HISTORY_DAYS is set)
SCHEMA_CHECK_EVERY = 10.0  # seconds between checks that the tables are still there
# Seconds a notified pass waits before it reads: the hand-off that notified it
# (a job's end, the next one's claim and spawn) runs first, undisturbed (bench/
# handoff.py), and a burst of changes is written as one batch.
COALESCE = 0.05


def _is_outage(exc: BaseException) -> bool:
    return classify(exc) is not None


class HistoryWriter:
    def __init__(self, core: Deployster, *, interval: float = 1.0) -> None:
        self.core = core
        self.interval = interval
        self._wake = asyncio.Event()
        self._stopping = False
        self._next_prune = 0.0  # loop time of the next prune: the first pass does one
        self._next_schema_check = 0.0

    def notify(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Make ``run`` return after its current pass (with one last flush).

        Cancelling the task instead is unreliable on Python 3.11: a cancel that
        lands as ``wait_for``'s event fires is swallowed, and the loop runs on.
        """
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        failing = False  # log an outage once, not every second
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            if not self._stopping:
                await asyncio.sleep(COALESCE)
            self._wake.clear()
            try:
                await self._schema_check_when_due()
                while await self.flush() >= BATCH:
                    pass
                await self._prune_when_due()
                if failing:
                    log.warning("history: writing again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Kept in the dirty hash: nothing is lost, the next pass retries.
                if is_schema_missing(exc):
                    self._next_schema_check = 0.0  # re-create it on the next pass
                    if not failing:
                        log.warning("history: the database has lost deployster's tables "
                                    "(dropped and created again?); re-creating them")
                elif not _is_outage(exc):
                    log.exception("history: unexpected error; will retry")
                elif not failing:
                    log.warning("history: cannot write (%s: %s); will retry",
                                type(exc).__name__, exc)
                failing = True

    async def _schema_check_when_due(self) -> None:
        """Every ``SCHEMA_CHECK_EVERY`` seconds (and at once after a write found
        the tables missing): a database dropped and created again empty gets its
        tables back, so the rows kept meanwhile can be stored."""
        now = asyncio.get_running_loop().time()
        if now < self._next_schema_check:
            return
        self._next_schema_check = now + SCHEMA_CHECK_EVERY
        try:
            await schema_version(self.core.db)
            return
        except Exception as exc:
            if not is_schema_missing(exc):
                raise
        applied = await migrate(self.core.db)
        log.warning("history: re-created deployster's tables (migrations %s)", applied)

    async def _prune_when_due(self) -> None:
        """Trim the SQL history once an hour, from the same loop that writes it
        (so on SQLite the two never contend for the file)."""
        settings = self.core.settings
        now = asyncio.get_running_loop().time()
        if settings.history_days <= 0 or now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        result = await prune_history(self.core.db, older_than=settings.history_days * DAY,
                                     keep=settings.history_keep)
        if result.deleted:
            log.info("history: pruned %d deployments older than %g days",
                     result.deleted, settings.history_days)
            await self.core.redis.publish(self.core.keys.feed, events.encode(events.HISTORY))

    async def flush(self) -> int:
        """Write up to one batch of changed jobs to SQL; returns how many."""
        core = self.core
        dirty = cast(dict[str, str], await core.redis.hgetall(core.keys.dirty))
        if not dirty:
            return 0
        batch = sorted(dirty.items())[:BATCH]
        jobs = {j.id: j for j in await core.jobs.get_many([job_id for job_id, _ in batch])}
        rows = []
        for job_id, _ in batch:
            job = jobs.get(job_id)
            if job is None:
                continue
            text = None
            if job.status.finished:
                text = await read_full_log(core.redis, core.keys, job_id)
                # A job written again after its log reached SQL may have no
                # stream left: its row keeps its log (None leaves the column).
                if not text and job.extra.get("log_in_sql"):
                    text = None
            rows.append(store.deployment_row(job, log=text))
        try:
            await store.upsert_deployments(core.db, rows)
        except Exception as exc:
            if _is_outage(exc):
                raise
            # A row the database refuses: write the others anyway.
            log.warning("history: batch refused (%s: %s); writing row by row",
                        type(exc).__name__, exc)
            await self._write_each(rows)
        retention = max(1, int(core.settings.retention))
        log_grace = max(1, min(retention, int(core.settings.log_grace)))
        any_finished = False
        async with core.redis.pipeline(transaction=False) as pipe:  # one round trip
            for job_id, version in batch:
                job = jobs.get(job_id)
                finished = "1" if job is not None and job.status.finished else "0"
                any_finished |= finished == "1"
                await core.scripts.settle(job_id=job_id, version=version,
                                          retention_s=retention, log_grace_s=log_grace,
                                          finished=finished, client=pipe)
            if any_finished:  # the dashboard's "last deploy" can be read again
                pipe.publish(core.keys.feed, events.encode(events.HISTORY))
            await pipe.execute()
        return len(batch)

    async def _write_each(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` one at a time, so one bad row cannot hold back the
        history of every later job (the batch would be retried for ever).

        A refused row is written again with its log replaced by a note (the log
        is what odd bytes usually come from); refused again, it is logged and
        left out, and the job stays readable from Redis until its retention.
        """
        for row in rows:
            try:
                await store.upsert_deployments(self.core.db, [row])
                continue
            except Exception as exc:
                if _is_outage(exc):
                    raise
                error = f"{type(exc).__name__}: {exc}"
            if row.get("log") is not None:
                note = f"[deployster] the log could not be stored in the history ({error})\n"
                try:
                    await store.upsert_deployments(
                        self.core.db, [{**row, "log": note, "log_bytes": len(note.encode())}])
                    log.error("history: job %s stored without its log (%s)", row["id"], error)
                    continue
                except Exception as exc:
                    if _is_outage(exc):
                        raise
                    error = f"{type(exc).__name__}: {exc}"
            log.error("history: job %s cannot be stored, left out (%s)", row["id"], error)
