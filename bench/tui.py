"""Dashboard figures with 500 projects and 50,000 history rows (issue #4).

Prints start-up time (app created → the projects table shows every row),
refresh CPU time (one overview fetch plus redraw, CPU seconds of this process,
median of several) and peak RSS. Targets: start ≤ 1.5 s, refresh ≤ 50 ms CPU,
RSS ≤ 150 MB. Uses Redis on 127.0.0.1:6379 when it answers, else the embedded
one; SQLite in a temp dir; its own key namespace, deleted afterwards.

    python bench/tui.py [--projects 500] [--history 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from deployster import store
from deployster.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from deployster.models import Job, JobStatus
from deployster.service import Deployster
from deployster.settings import Settings
from deployster.tui.app import make_app


def redis_url(tmp: Path) -> tuple[str, bool]:
    try:
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=0.5)
        client.ping()
        client.close()
        return "redis://127.0.0.1:6379/0", False
    except redis.RedisError:
        return ensure_embedded_redis(tmp / "redis"), True


async def seed(core: Deployster, root: Path, projects: int, history: int) -> None:
    ids = []
    for i in range(projects):
        path = root / f"app-{i:03d}"
        path.mkdir()
        ids.append((await core.projects.add(str(path), name=f"app-{i:03d}")).id)
    rows = []
    for n in range(history):
        pid = ids[n % len(ids)]
        t = f"2026-01-{1 + n % 28:02d}T{n % 24:02d}:00:00.000Z"
        job = Job(id=f"01JB{n:022d}", project_id=pid, project=f"app-{pid:03d}",
                  cd=str(root), commands=["yarn build", "supervisorctl restart x"],
                  commit_hash=f"{n:08x}", ref_name="main",
                  status=JobStatus.COMPLETE if n % 7 else JobStatus.FAILED,
                  reason=None if n % 7 else "command_failed",
                  queued_at=t, started_at=t, finished_at=t)
        rows.append(store.deployment_row(job, log="ok\n"))
        if len(rows) == 1000:
            await store.upsert_deployments(core.db, rows)
            rows = []
    if rows:
        await store.upsert_deployments(core.db, rows)
    for pid in ids[:50]:  # some held locks, as on a busy box
        await core.lock.acquire(pid, f"01JDLOCK{pid:018d}", 600_000)


async def main(projects: int, history: int, refreshes: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dst-bench-tui-"))
    url, embedded = redis_url(tmp)
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(token="bench", data_dir=tmp, redis_url=url,
                        database_url=f"sqlite:///{tmp / 'bench.db'}", namespace=namespace)
    core = await Deployster.open(settings)
    try:
        t0 = time.perf_counter()
        await seed(core, tmp, projects, history)
        print(f"seeded {projects} projects, {history} history rows "
              f"in {time.perf_counter() - t0:.1f}s")
        start = time.perf_counter()
        app = make_app(core, poll_interval=3600)  # refreshes measured by hand below
        async with app.run_test(size=(160, 50)) as pilot:
            table = app.screen.query_one("#projects")
            while getattr(table, "row_count", 0) < projects:
                await pilot.pause(0.01)
            startup = time.perf_counter() - start
            cpu = []
            for _ in range(refreshes):
                c0 = time.process_time()
                await app.refresh_data()
                await pilot.pause()
                cpu.append(time.process_time() - c0)
            screen = app.screen
            ticks = []
            for _ in range(5):  # the one-second redraw of the clocks (TTL, ages)
                c0 = time.process_time()
                screen.render_rows()  # type: ignore[attr-defined]
                await pilot.pause()
                ticks.append(time.process_time() - c0)
            await pilot.press("enter")  # the first project: queue, history page, log
            await pilot.pause(0.5)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"start-up:       {startup:.2f} s   (target ≤ 1.5 s)")
        print(f"refresh CPU:    {statistics.median(cpu) * 1000:.1f} ms median, "
              f"{max(cpu) * 1000:.1f} ms max over {refreshes}   (target ≤ 50 ms)")
        print(f"clock tick CPU: {statistics.median(ticks) * 1000:.1f} ms median "
              "(once a second: TTL, heartbeat and ages redrawn)")
        print(f"peak RSS:       {rss_mb:.0f} MB   (target ≤ 150 MB)")
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(f"{namespace}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
        client.close()
        await core.close()
        if embedded:
            stop_embedded_redis(tmp / "redis")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=500)
    parser.add_argument("--history", type=int, default=50_000)
    parser.add_argument("--refreshes", type=int, default=20)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.projects, args.history, args.refreshes)))
