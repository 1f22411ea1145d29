"""Dashboard figures with 500 projects and 50,000 history rows (README.md#the-dashboard).

Prints start-up time (app created → the projects table shows every row) and
the CPU time of that first fetch; refresh CPU time (one overview fetch plus
the redraw it causes, CPU seconds of this process), separately for

- a first refresh: the last finished deploy per project queried from SQL, as
  at start-up and for a few seconds after each ``finished`` event, and
- a steady-state refresh: Redis only (locks, TTLs, queues, running jobs), the
  SQL part reused, as on every other poll;

the once-a-second clock tick (TTL, heartbeat and ages redrawn: CPU of the
tick and the repaint it causes) with the first 100 and all the projects on the
table (``--tick-projects``), with 50 of them locked, the first 50 by name, so
that each tick redraws a TTL on every line of a 160x50 screen (the worst
case), and with 5 (a few deploys under way: ``--tick-locks``); peak RSS, how long a
1,000,000-line log takes to show its tail and how long the event loop (the UI)
stalled meanwhile, and the idle cost: the share of one core the dashboard
uses while nothing changes (no lock, no job), on the projects screen and on a
project's screen (its history and a finished job's log), with the real poll
and clock (CPU seconds over ``--idle-seconds`` of wall time).
The tick is paused while refreshes are measured, so each figure is its own.
Every figure includes the test pilot's ``pause()`` that lets the screen draw;
its cost with nothing to draw is printed too, and the tick and the repaint
are also given net of it.
Targets: start ≤ 1.5 s, first refresh ≤ 30 ms CPU, steady refresh ≤ 50 ms,
tick ≤ 5 ms, RSS ≤ 150 MB, idle < 1 % of a core. Uses Redis on 127.0.0.1:6379
when it answers, else the embedded one; SQLite in a temp dir; its own key
namespace, deleted afterwards. ``--nodes N`` (a fleet: README.md#several-hosts)
registers the projects over N nodes in turn and announces each node, so the
figures include the node column and the header's nodes.

    python bench/tui.py [--projects 500] [--history 50000] [--tick-projects 100,500]
                        [--tick-locks 50,5] [--idle-seconds 20] [--nodes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import redis
from textual.pilot import Pilot

from deployster import fleet, store
from deployster.clock import utcnow
from deployster.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from deployster.models import Job, JobStatus
from deployster.service import Deployster
from deployster.settings import Settings
from deployster.tui.app import POLL_INTERVAL, DeploysterApp, make_app
from deployster.tui.format import set_clock
from deployster.tui.messages import DataRefreshed
from deployster.tui.reader import Overview
from deployster.tui.screens.log import LogScreen
from deployster.tui.widgets.log_pane import LogPane


def redis_url(tmp: Path) -> tuple[str, bool]:
    try:
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=0.5)
        client.ping()
        client.close()
        return "redis://127.0.0.1:6379/0", False
    except redis.RedisError:
        return ensure_embedded_redis(tmp / "redis"), True


async def seed(core: Deployster, root: Path, projects: int, history: int,
               nodes: int = 1) -> None:
    """``projects`` projects (over ``nodes`` nodes in turn, each announced as
    a server would), ``history`` finished deploys, 50 locks held."""
    cores = [core] + [await Deployster.open(core.settings.model_copy(
        update={"node": f"web-{k + 1}"})) for k in range(1, nodes)]
    ids = []
    for i in range(projects):
        path = root / f"app-{i:03d}"
        path.mkdir()
        registry = cores[i % nodes].projects
        ids.append((await registry.add(str(path), name=f"app-{i:03d}")).id)
    if nodes > 1:
        await core.redis.hset(core.keys.nodes, mapping={
            c.node: fleet.announcement(c) for c in cores})
    for other in cores[1:]:
        await other.close()
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
        # Held by no job deployster knows (the lock module takes it only in a claim).
        await core.redis.set(core.keys.lock(pid), f"01JDLOCK{pid:018d}", nx=True, px=600_000)


async def big_log(core: Deployster, app: DeploysterApp, pilot: Pilot[None],
                  lines: int) -> tuple[float, float]:
    """Open a finished job's ``lines``-line log (from history): seconds until its
    last line shows, and the longest the event loop stalled meanwhile (the UI
    freezes for that long)."""
    job = Job(id="01JDBENCHBENCHBENCHBENCH00", project_id=1, project="app-000", cd="/tmp",
              commands=["yarn build"], commit_hash="abc1234", ref_name="main",
              status=JobStatus.COMPLETE, queued_at="2026-01-01T00:00:00.000Z",
              started_at="2026-01-01T00:00:00.000Z", finished_at="2026-01-01T00:05:00.000Z")
    body = "".join(f"line {i:07d} of a very chatty build\n" for i in range(lines))
    await store.upsert_deployments(core.db, [store.deployment_row(job, log=body)])
    last = f"line {lines - 1:07d}"
    loop = asyncio.get_running_loop()
    stalls = [0.0]

    async def watch() -> None:
        before = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            stalls.append(now - before - 0.01)
            before = now

    watcher = asyncio.create_task(watch())
    start = time.perf_counter()
    app.push_screen(LogScreen(app.reader, job.id))
    def shown() -> bool:
        panes = app.screen.query(LogPane) if isinstance(app.screen, LogScreen) else []
        return bool(panes) and panes[0].text.endswith(last + " of a very chatty build")

    while not shown():
        await pilot.pause(0.01)
    opened = time.perf_counter() - start
    await pilot.press("g", "G", "slash", *"0999999", "enter")  # the top, the end, a search
    await pilot.pause(0.2)
    watcher.cancel()
    return opened, max(stalls)


async def idle_share(seconds: float) -> float:
    """The share of one core this process used over ``seconds`` of wall time
    (the dashboard runs meanwhile: this only waits)."""
    c0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    return (time.process_time() - c0) / (time.monotonic() - t0)


async def unlock_all(core: Deployster, projects: int) -> None:
    """Release the seeded locks: from then on nothing changes."""
    for pid in range(1, projects + 1):
        await core.redis.delete(core.keys.lock(pid))


async def main(projects: int, history: int, refreshes: int, log_lines: int,
               tick_projects: list[int], idle_seconds: float, nodes: int = 1,
               tick_locks: tuple[int, ...] = (50, 5)) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dst-bench-tui-"))
    url, embedded = redis_url(tmp)
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(token="bench", data_dir=tmp, redis_url=url,
                        database_url=f"sqlite:///{tmp / 'bench.db'}", namespace=namespace,
                        node="web-1" if nodes > 1 else "")
    core = await Deployster.open(settings)
    try:
        t0 = time.perf_counter()
        await seed(core, tmp, projects, history, nodes)
        over = f" over {nodes} nodes" if nodes > 1 else ""
        print(f"seeded {projects} projects{over}, {history} history rows "
              f"in {time.perf_counter() - t0:.1f}s")
        start = time.perf_counter()
        # A clock the bench moves a second per tick, as the real tick sees it.
        shift = [0.0]
        set_clock(lambda: utcnow() + timedelta(seconds=shift[0]))
        app = make_app(core, poll_interval=3600,  # refreshes measured by hand below
                       monotonic=lambda: time.monotonic() + shift[0])
        async with app.run_test(size=(160, 50)) as pilot:
            table = app.screen.query_one("#projects")
            while getattr(table, "row_count", 0) < projects:
                await pilot.pause(0.01)
            startup = time.perf_counter() - start
            screen = app.screen
            screen.clock.pause()  # type: ignore[attr-defined]

            async def measure(cold: bool) -> float:
                if cold:
                    app.history_changed()
                c0 = time.process_time()
                await app.refresh_data()
                await pilot.pause()
                return time.process_time() - c0

            # Steady state first: a cold one (after a history event) queries SQL.
            warm = [await measure(False) for _ in range(refreshes)]
            cold = [await measure(True) for _ in range(refreshes)]
            # The very first, as at start-up: new connections, no cached projects.
            first = []
            for _ in range(5):
                app.core = await Deployster.open(settings)
                try:
                    first.append(await measure(True))
                finally:
                    await app.core.close()
                    app.core = core
            full = app.overview
            ticks: dict[tuple[int, int], list[float]] = {}
            for n in sorted({min(n, projects) for n in tick_projects}):
                for locks in tick_locks:
                    # The first n projects, as if there were no others, and
                    # of the 50 locks only the first ``locks`` held.
                    rows, held = [], 0
                    for row in full.rows[:n]:
                        if row.lock_owner is not None:
                            held += 1
                            if held > locks:
                                row = dataclasses.replace(row, lock_owner=None, lock_ttl_ms=None,
                                                          heartbeat_age=None, running=None)
                        rows.append(row)
                    screen.post_message(DataRefreshed(Overview(rows, full.health,
                                                               full.fetched_at)))
                    await pilot.pause()
                    samples = ticks[n, min(held, locks)] = []
                    for _ in range(refreshes):
                        shift[0] += 1.0  # a second later: every TTL (and heartbeat) moved
                        c0 = time.process_time()
                        screen.render_rows()  # type: ignore[attr-defined]
                        await pilot.pause()
                        samples.append(time.process_time() - c0)
            # The reference: the table repainted with no cell changed, what
            # Textual itself costs to redraw every line (the floor of a tick
            # that changes every line).
            repaints = []
            for _ in range(refreshes):
                c0 = time.process_time()
                table.refresh()
                await pilot.pause()
                repaints.append(time.process_time() - c0)
            # What the test pilot's pause costs with nothing to draw (a message
            # to every widget and back): the bench's, not the dashboard's.
            pauses = []
            for _ in range(refreshes):
                c0 = time.process_time()
                await pilot.pause()
                pauses.append(time.process_time() - c0)
            screen.post_message(DataRefreshed(full))
            screen.clock.resume()  # type: ignore[attr-defined]
            # Idle: the real poll and clock, nothing locked, queued or running.
            await unlock_all(core, projects)
            app.poll_interval = POLL_INTERVAL
            app.request_refresh()
            await pilot.pause(2.0)
            idle_projects = await idle_share(idle_seconds)
            await pilot.press("enter")  # the first project: queue, history page, log
            await pilot.pause(2.0)
            idle_project = await idle_share(idle_seconds)
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            log_open, log_stall = await big_log(core, app, pilot, log_lines)

        def figures(samples: list[float]) -> str:
            return (f"{statistics.median(samples) * 1000:5.1f} ms median, "
                    f"{max(samples) * 1000:5.1f} ms max over {len(samples)}")

        pause = statistics.median(pauses)

        def net(samples: list[float]) -> str:
            return f"net of the pilot's pause {(statistics.median(samples) - pause) * 1000:4.1f} ms"

        print(f"start-up:         {startup:.2f} s   (target ≤ 1.5 s)")
        print(f"first refresh:    {figures(first)}   (a new core: connections, projects "
              "and SQL cold; target ≤ 30 ms)")
        print(f"SQL refresh:      {figures(cold)}   (last deploys queried, as after "
              "a 'history' event)")
        print(f"steady refresh:   {figures(warm)}   (Redis only; target ≤ 50 ms)")
        repaint = statistics.median(repaints) - pause
        for (n, locks), samples in ticks.items():
            print(f"clock tick:       {figures(samples)}, {net(samples)}   (once a second, "
                  f"{n} projects, {locks} locked; target ≤ 5 ms; net "
                  f"{(statistics.median(samples) - pause) / repaint:.1f}x the repaint below)")
        print(f"repaint only:     {figures(repaints)}, {net(repaints)}   (the table redrawn, "
              "no cell changed: Textual's own cost for every line)")
        print(f"pilot's pause:    {figures(pauses)}   (nothing to draw: the test harness's "
              "own cost in each figure above, which a real terminal does not pay)")
        print(f"peak RSS:         {rss_mb:.0f} MB   (target ≤ 150 MB)")
        print(f"idle, projects:   {idle_projects * 100:4.1f} % of a core over {idle_seconds:g} s "
              "(nothing changing; target < 1 %)")
        print(f"idle, a project:  {idle_project * 100:4.1f} % of a core over {idle_seconds:g} s "
              "(its history and a finished job's log; target < 1 %)")
        print(f"{log_lines:,}-line log: its tail on screen in {log_open:.2f} s; longest "
              f"event-loop stall meanwhile {log_stall * 1000:.0f} ms")
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
    parser.add_argument("--log-lines", type=int, default=1_000_000)
    parser.add_argument("--tick-projects", default="100,500",
                        help="comma-separated project counts the tick is measured at "
                             "(each at most --projects)")
    parser.add_argument("--tick-locks", default="50,5",
                        help="comma-separated numbers of held locks (of the 50 seeded) the "
                             "tick is measured with: a locked row's TTL and heartbeat "
                             "move every second")
    parser.add_argument("--idle-seconds", type=float, default=20.0,
                        help="wall seconds each idle figure is measured over")
    parser.add_argument("--nodes", type=int, default=1,
                        help="nodes the projects are registered over (a fleet: a node "
                             "column, the nodes in the header)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.tick_projects.split(",") if n.strip()]
    locks = tuple(min(50, int(n)) for n in args.tick_locks.split(",") if n.strip())
    sys.exit(asyncio.run(main(args.projects, args.history, args.refreshes, args.log_lines,
                              sizes, args.idle_seconds, max(1, args.nodes), locks)))
