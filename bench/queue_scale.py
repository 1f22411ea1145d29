#!/usr/bin/env python
"""Per-request queue costs at 10 / 1,000 / 10,000 queued jobs of one project.

For each size a project's queue is filled (``fifo`` enqueues, each job its own
ref, one last job on the ref ``hot``) behind no runner, so nothing starts.
Then, through the core API in this process (Redis round trips included),
medians in milliseconds of:

- **supersede enqueue**: a new job on ``hot`` under the ``supersede`` policy
  (it replaces the one ``hot`` job queued, so the queue keeps its size);
- **/status read**: ``Deployster.read_status`` of the last queued job, with its
  queue position, as ``GET /status`` reads it;
- **dashboard queue**: ``overview.queued_jobs``, what the dashboard's project
  screen reads on every refresh.

Each also with this process's CPU milliseconds (the client side of the call:
Python work and round trips; Redis's own time is in the wall figure).

Each figure should stay flat from 10 to 10,000 (the ratio column: against 10).
Runs against whichever ``deployster`` is imported, so the same script measures
another checkout: ``PYTHONPATH=/path/to/checkout python bench/queue_scale.py``.

The sizes are measured in turn, round after round (the median of ``--reps``
rounds), so the machine's other load weighs on each alike.

    python bench/queue_scale.py [--sizes 10,1000,10000] [--reps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable
from typing import Any

from _harness import BenchEnv, add_common_args

import deployster
from deployster import overview
from deployster.ids import new_job_id
from deployster.models import Job
from deployster.service import Deployster
from deployster.settings import Settings

FILL_BATCH = 500  # enqueues in flight at once while filling (one pipeline)


def make_job(project_id: int, ref: str) -> Job:
    job_id = new_job_id()
    return Job(id=job_id, project_id=project_id, project=f"p{project_id}", cd="/tmp",
               commands=["true", "supervisorctl restart p"], commit_hash=job_id.lower(),
               ref_name=ref)


async def status_read(core: Deployster, job_id: str) -> Any:
    """What ``GET /status`` reads for a queued job, position included."""
    got = await core.read_status(job_id)
    if isinstance(got, tuple):  # an older core: (read, job), then the position apart
        read, job = got
        if job is not None:
            await core.queue_position(job)
        return read
    return got


async def fill(core: Deployster, project_id: int, size: int) -> Job:
    """Queue ``size`` jobs of ``project_id``, each its own ref, the last one on
    ``hot``; returns that last job."""
    for start in range(0, size - 1, FILL_BATCH):
        end = min(size - 1, start + FILL_BATCH)
        batch = [make_job(project_id, f"branch-{i}") for i in range(start, end)]
        await asyncio.gather(*(core.queue.enqueue(j, runner=None) for j in batch))
    hot = make_job(project_id, "hot")
    await core.queue.enqueue(hot, runner=None)
    assert await core.queue.length(project_id) == size
    return hot


async def timed(call: Awaitable[Any]) -> tuple[float, float]:
    """Wall and CPU (this process) milliseconds of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    await call
    return (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000


async def run(env: BenchEnv, sizes: list[int], reps: int) -> None:
    settings = Settings(token="bench", data_dir=env.tmp, redis_url=env.redis_url,
                        database_url=env.database_url, namespace=env.namespace)
    core = await Deployster.open(settings)
    names = ("supersede enqueue", "/status read", "dashboard queue")
    times: dict[int, dict[str, list[tuple[float, float]]]] = {
        s: {n: [] for n in names} for s in sizes}
    try:
        projects = dict(enumerate(sizes, 1))
        hot = {p: await fill(core, p, size) for p, size in projects.items()}
        # Rounds over every size in turn, the first one unmeasured (warm-up), so
        # the machine's other load falls on every size alike.
        for rnd in range(reps + 1):
            for p, size in projects.items():
                hot[p] = make_job(p, "hot")  # replaces the one 'hot' job queued
                figures = [
                    await timed(core.queue.enqueue(hot[p], runner=None, policy="supersede")),
                    await timed(status_read(core, hot[p].id)),
                    await timed(overview.queued_jobs(core, p)),
                ]
                if rnd:
                    for name, both in zip(names, figures, strict=True):
                        times[size][name].append(both)
        for p, size in projects.items():
            assert await core.queue.length(p) == size  # each enqueue replaced one
    finally:
        await core.close()
    wall = {s: {n: statistics.median(w for w, _ in v) for n, v in t.items()}
            for s, t in times.items()}
    cpu = {s: {n: statistics.median(c for _, c in v) for n, v in t.items()}
           for s, t in times.items()}
    print(f"deployster from {deployster.__path__[0]}; Redis {env.redis_kind}; "
          f"medians of {reps} rounds: wall ms (x: against {sizes[0]:,} queued), "
          "then this process's CPU ms")
    print(f"{'queued':>8} | " + " | ".join(f"{n:>27}" for n in names))
    for size in sizes:
        cells = [f"{wall[size][n]:8.3f} x{wall[size][n] / wall[sizes[0]][n]:5.1f} "
                 f"cpu {cpu[size][n]:7.3f}" for n in names]
        print(f"{size:>8,} | " + " | ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000,10000",
                        help="queue lengths, comma-separated (default 10,1000,10000)")
    parser.add_argument("--reps", type=int, default=30,
                        help="measured rounds (each: one call of each kind per size)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s < 1 for s in sizes) or args.reps < 1:
        parser.error("sizes and --reps must be positive")
    with BenchEnv("qscale", args.redis_url, args.database_url, args.keep) as env:
        asyncio.run(run(env, sizes, args.reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
