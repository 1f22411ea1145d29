#!/usr/bin/env python
"""Starting a job's process: deployster's way against the one it replaced.

- ``loop``: ``deployster.spawn.spawn``, ``subprocess.Popen``'s vfork in the
  event loop's own thread (what the server does);
- ``thread``: the same ``Popen`` on a two-thread pool, awaited from the loop
  (what it did before).

Each way is measured with the loop otherwise idle and with the loop busy (a
task doing ``--slice-ms`` (0.5) of pure-Python work between yields, as a
server answering requests does), ``--spawns`` (200) spawns of ``sh -c true``
one after another, at most ``--budget`` (20) seconds per way and load, in
alternated rounds (``--rounds``, 3). Printed per way and load: the spawn's
latency, from the call to the started process back in the awaiting coroutine
(p50, p99, max; a spawn still under way when the budget ran out counts with
the time it had taken, marked ``>``), and the longest the loop went without
running a ready callback meanwhile (a ticker task yielding in a loop records
its gaps; busy, a gap is at least one slice). Medians of the rounds.

    python bench/spawn.py [--spawns 200] [--rounds 3] [--slice-ms 0.5] [--budget 20]

What to read: ``thread`` beside a busy loop waits for the GIL at each of
``Popen``'s steps that release it; on this 2-core box with Python 3.11 single
spawns took from 2 ms to 36 s that way (a 5-spawn probe: 35.9 s, 10.2 s,
2.4 ms, 1.8 s, 6.9 ms), against a few ms in the loop's thread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from deployster.spawn import spawn

POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-spawn")


def popen(cwd: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["/bin/sh", "-c", "true"], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


async def in_loop(cwd: str, env: dict[str, str]) -> Callable[[], Awaitable[None]]:
    async def one() -> None:
        child = await spawn(["/bin/sh", "-c", "true"], cwd=cwd, env=env)
        await child.wait()
        child.close_output()
    return one


async def in_thread(cwd: str, env: dict[str, str]) -> Callable[[], Awaitable[None]]:
    loop = asyncio.get_running_loop()

    async def one() -> None:
        proc = await loop.run_in_executor(POOL, partial(popen, cwd, env))
        assert proc.stdout is not None
        proc.stdout.close()
        await loop.run_in_executor(POOL, proc.wait)
    return one


async def measure(way: Callable[[str, dict[str, str]], Awaitable[Callable[[], Awaitable[None]]]],
                  spawns: int, busy: bool, slice_s: float,
                  budget: float) -> tuple[list[float], float, bool]:
    """Latencies of up to ``spawns`` spawns (seconds, to the process started),
    the loop's longest gap meanwhile (seconds), and whether the budget ran
    out with a spawn under way (its time so far is the last latency)."""
    cwd = tempfile.gettempdir()
    env = dict(os.environ)
    one = await way(cwd, env)
    stop = False
    gaps = [0.0]

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last)
            last = now

    async def work() -> None:
        while not stop:
            end = time.perf_counter() + slice_s
            while time.perf_counter() < end:
                sum(range(100))
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(ticker())] + ([asyncio.create_task(work())] if busy else [])
    await asyncio.sleep(0.05)
    gaps[0] = 0.0
    latencies = []
    cut = False
    deadline = time.perf_counter() + budget
    try:
        for _ in range(spawns):
            started = time.perf_counter()
            try:  # includes the wait for `true` to exit: taken off below
                await asyncio.wait_for(one(), max(0.0, deadline - started))
            except TimeoutError:
                cut = True
            latencies.append(time.perf_counter() - started)
            if cut or time.perf_counter() >= deadline:
                break
    finally:
        stop = True
        await asyncio.gather(*tasks)
    return latencies, gaps[0], cut


async def exit_cost(spawns: int) -> float:
    """The median time from a started ``sh -c true`` to its exit seen: taken
    off each latency, so a figure is the start alone."""
    cwd, env = tempfile.gettempdir(), dict(os.environ)
    costs = []
    for _ in range(spawns):
        proc = popen(cwd, env)
        started = time.perf_counter()
        proc.wait()
        costs.append(time.perf_counter() - started)
        assert proc.stdout is not None
        proc.stdout.close()
    return statistics.median(costs)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slice-ms", type=float, default=0.5)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds at most per way, load and round")
    args = parser.parse_args(argv)
    ways = {"loop": in_loop, "thread": in_thread}
    figures: dict[tuple[str, bool], list[tuple[float, float, float, float, int, bool]]] = {}
    print(f"spawn: {args.spawns} spawns of sh -c true per way and load, {args.rounds} rounds "
          f"(load avg {os.getloadavg()[0]:.2f}, switch interval "
          f"{sys.getswitchinterval() * 1000:g} ms)")
    for _ in range(args.rounds):
        base = asyncio.run(exit_cost(args.spawns // 4 or 1))
        for busy in (False, True):
            for name, way in ways.items():
                latencies, gap, cut = asyncio.run(measure(way, args.spawns, busy,
                                                          args.slice_ms / 1000, args.budget))
                starts = [max(0.0, t - base) for t in latencies]
                figures.setdefault((name, busy), []).append(
                    (pct(starts, 0.5), pct(starts, 0.99), max(starts), gap, len(starts), cut))
    for busy in (False, True):
        load = f"loop busy ({args.slice_ms:g} ms slices)" if busy else "loop idle"
        print(f"  {load}:")
        for name in ways:
            rows = figures[name, busy]
            p50, p99, most, gap = (statistics.median(r[i] for r in rows) * 1000
                                   for i in range(4))
            done = statistics.median(r[4] for r in rows)
            over = ">" if any(r[5] for r in rows) else " "
            print(f"    {name:<7} start p50 {p50:8.2f} ms, p99 {p99:8.2f} ms, "
                  f"max {over}{most:8.2f} ms over {done:g} spawns; "
                  f"longest loop gap {gap:5.2f} ms")
        loop50 = statistics.median(r[0] for r in figures["loop", busy])
        thread50 = statistics.median(r[0] for r in figures["thread", busy])
        print(f"    thread/loop start p50: {thread50 / loop50 if loop50 else 0:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
