"""Trimming the SQL history so years of deploy logs do not fill the disk.

Finished deployments requested before a cut-off go, except each project's
``keep`` newest finished ones: a quiet project still shows its last deploy and
can be redeployed. Each project's newest complete one stays too, however old
and whatever ``keep`` says: it is what is deployed now, what ``GET /projects``
and the dashboard show as the deployed commit, and what a rollback goes back
from (``docs/api.md``). Queued and running rows are never touched. Age is the job
id's time (ULIDs sort by when the deploy was requested), which the
``(project_id, id)`` index serves without reading any log.

Rows go in small batches, one short write each: on SQLite the server's history
writer and the dashboard share the file and must not wait behind one long
delete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from databases import Database

from . import store
from .ids import first_id_at

BATCH = 200
DAY = 86400.0


@dataclass(frozen=True)
class PruneResult:
    deleted: int  # deployments removed (or, in a dry run, that would be)
    cutoff: float  # epoch seconds: requested before this, unless kept


async def prune_history(
    db: Database, *, older_than: float, keep: int, now: float | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Delete finished deployments requested more than ``older_than`` seconds
    ago, keeping each project's ``keep`` newest finished ones and its newest
    complete one.

    Raises ``ValueError`` when ``older_than`` is not positive or ``keep`` negative."""
    if older_than <= 0 or keep < 0:
        raise ValueError("older_than must be positive and keep not negative")
    cutoff = (time.time() if now is None else now) - older_than
    before = first_id_at(cutoff)
    deleted = 0
    for project_id in await store.select_deployment_project_ids(db):
        bound = before
        if keep:
            kept_oldest = await store.select_nth_newest_finished(db, project_id, keep)
            if kept_oldest is None:
                continue  # fewer than ``keep`` finished deploys: all stay
            bound = min(bound, kept_oldest)
        spare = await store.select_newest_complete_id(db, project_id) or ""
        if dry_run:
            deleted += await store.count_finished_before(db, project_id, bound, spare=spare)
            continue
        while ids := await store.select_finished_ids_before(db, project_id, bound,
                                                             limit=BATCH, spare=spare):
            await store.delete_finished_through(db, project_id, ids[-1], spare=spare)
            deleted += len(ids)
    return PruneResult(deleted, cutoff)
