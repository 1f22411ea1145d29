#!/usr/bin/env python
"""What a ``GET /metrics`` scrape costs at 10 / 100 / 500 projects.

Projects are registered in turn up to each size, each with a history in its
counters (``--deploys`` claims and finishes through the core's scripts: ends of
every kind, durations in several buckets, log bytes); a tenth of them hold
their lock with two deploys queued behind it. Then, through the core in this
process, medians over ``--reps`` scrapes of:

- **scrape**: ``metrics.exposition``, what the route answers (wall ms, and
  this process's CPU ms: the server's own cost);
- **read**: ``metrics.read`` alone (the registry, then the one Redis round
  trip of ``metrics_read.lua`` calls, one per ``metrics.CHUNK`` projects):
  what the event loop itself spends, Redis's time aside;
- **render**: ``metrics.render`` alone (prometheus_client's text format; the
  route runs it in a thread, off the event loop);
- **Redis per call**: Redis's own time per ``metrics_read.lua`` call (the
  ``EVALSHA`` entry of ``INFO commandstats``, before and after; others'
  scripts on a shared Redis make it noisy: use ``--redis-url embedded``), the
  longest any other client waits behind a scrape.

The page's size in bytes and samples is printed too. Nothing may grow with the
history: ``--deploys`` changes the counters' values, not the page.

    python bench/metrics_scrape.py [--sizes 10,100,500] [--reps 30] [--deploys 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable
from typing import Any, cast

from _harness import BenchEnv, add_common_args

from deployster import metrics
from deployster.ids import new_job_id
from deployster.models import Job, JobStatus, Project, Reason
from deployster.service import Deployster
from deployster.settings import Settings

ENDS = [(JobStatus.COMPLETE, None), (JobStatus.COMPLETE, None),
        (JobStatus.FAILED, Reason.COMMAND_FAILED), (JobStatus.FAILED, Reason.TIMED_OUT)]


def make_job(project: Project, n: int) -> Job:
    return Job(id=new_job_id(), project_id=project.id, project=project.name, cd=project.path,
               commands=["true", "supervisorctl restart app"], commit_hash=f"c{n}",
               ref_name="main")


async def history(core: Deployster, project: Project, deploys: int, hold: bool) -> None:
    """``deploys`` deploys of ``project`` claimed and ended (each with a duration
    of its own), one cancelled while queued; with ``hold``, one left running
    with two queued behind it."""
    for n in range(deploys):
        job = make_job(project, n)
        await core.queue.enqueue(job, runner="bench")
        ran_ms = int((time.time() - 7 ** (n % 5)) * 1000)  # 1 s .. 40 min ago
        await core.redis.hset(core.keys.job(job.id), "started_ms", ran_ms)
        running = cast(Job, await core.jobs.get(job.id))
        status, reason = ENDS[n % len(ENDS)]
        await core.queue.finish(running, status, reason=reason)
    queued = make_job(project, deploys)
    await core.queue.enqueue(queued, runner=None)
    await core.queue.cancel(queued)
    await core.redis.hincrby(core.keys.project_metrics(project.id), "log_bytes", 123_456)
    if hold:
        for n in range(3):
            await core.queue.enqueue(make_job(project, deploys + 1 + n), runner="bench")


def evalsha_stats(info: dict[str, Any]) -> tuple[int, int]:
    """(calls, microseconds) of EVALSHA since Redis started."""
    stats = info.get("cmdstat_evalsha") or {}
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def timed(call: Awaitable[Any]) -> tuple[float, float, Any]:
    """Wall and CPU (this process) milliseconds of one call, and its result."""
    start, cpu = time.perf_counter(), time.process_time()
    result = await call
    return (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000, result


async def measure(core: Deployster, reps: int) -> dict[str, float]:
    await metrics.exposition(core)  # warm: scripts loaded, registry cached
    scrape, scrape_cpu, read, render = [], [], [], []
    before = evalsha_stats(await core.redis.info("commandstats"))
    for _ in range(reps):
        wall, cpu, _ = await timed(metrics.exposition(core))
        scrape.append(wall)
        scrape_cpu.append(cpu)
    after = evalsha_stats(await core.redis.info("commandstats"))
    for _ in range(reps):
        wall, _, snapshot = await timed(metrics.read(core))
        read.append(wall)
        start = time.perf_counter()
        page = metrics.render(snapshot)
        render.append((time.perf_counter() - start) * 1000)
    calls = after[0] - before[0]
    return {
        "scrape": statistics.median(scrape), "scrape_cpu": statistics.median(scrape_cpu),
        "read": statistics.median(read), "render": statistics.median(render),
        "redis_per_call": (after[1] - before[1]) / 1000 / calls if calls else float("nan"),
        "calls": calls / reps, "bytes": len(page),
        "samples": sum(1 for line in page.splitlines() if not line.startswith(b"#")),
    }


async def run(env: BenchEnv, sizes: list[int], reps: int, deploys: int) -> None:
    settings = Settings(token="bench", data_dir=env.tmp, redis_url=env.redis_url,
                        database_url=env.database_url, namespace=env.namespace)
    (env.tmp / "projects").mkdir()
    core = await Deployster.open(settings)
    rows = []
    try:
        projects: list[Project] = []
        for size in sizes:
            while len(projects) < size:
                n = len(projects)
                path = env.tmp / "projects" / f"app-{n:04d}"
                path.mkdir()
                project = await core.projects.add(str(path))
                await history(core, project, deploys, hold=n % 10 == 0)
                projects.append(project)
            rows.append((size, await measure(core, reps)))
    finally:
        await core.close()
    print(f"GET /metrics scrape cost, through the core in this process; Redis "
          f"{env.redis_kind}; {deploys} deploys of history per project, a tenth of the "
          f"projects locked with 2 queued; medians of {reps} scrapes (ms)")
    print(f"{'projects':>8} | {'scrape':>7} {'cpu':>7} | {'read':>7} {'render':>7} | "
          f"{'Redis/call':>10} {'calls':>5} | {'samples':>7} {'bytes':>8}")
    for size, f in rows:
        print(f"{size:>8,} | {f['scrape']:7.2f} {f['scrape_cpu']:7.2f} | {f['read']:7.2f} "
              f"{f['render']:7.2f} | {f['redis_per_call']:10.3f} {f['calls']:5.0f} | "
              f"{f['samples']:7.0f} {f['bytes']:8.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,500",
                        help="project counts, comma-separated, ascending (default 10,100,500)")
    parser.add_argument("--reps", type=int, default=30, help="scrapes measured per size")
    parser.add_argument("--deploys", type=int, default=20,
                        help="deploys of history per project (default 20)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes) or sizes[0] < 1 or args.reps < 1 or args.deploys < 1:
        parser.error("sizes must be ascending and positive; --reps and --deploys positive")
    with BenchEnv("mscrape", args.redis_url, args.database_url, args.keep) as env:
        asyncio.run(run(env, sizes, args.reps, args.deploys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
