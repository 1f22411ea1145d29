#!/usr/bin/env python
"""What the seed's pollers cost: ``--clients`` (200) clients each polling
``GET /status/<its job>`` once a second against a real ``deployster serve``.

``--projects`` (10) projects each run one job that prints a line a second,
with the rest of the jobs queued behind them, so most pollers read a queued
job (status, position) and some a running one (status, new output). Each
client keeps one keep-alive connection (the minimal client of
``deploy_throughput.py``) and polls at 1 Hz, the clients spread evenly over
the second. The server process's CPU is read from /proc over ``--seconds``
(20) of polling, and over as long without polling before (the running jobs'
own cost: their log writes, heartbeats, the sweep) to take it off. Printed:
the server's CPU as a share of one core, gross and net of that idle cost,
CPU ms per poll (net), local Redis's CPU per poll, poll latency and any
non-200 answer. The same pollers then poll the bare Quart+Hypercorn server
of ``deploy_throughput.py`` (a constant queued answer, no Redis) the same way:
the reference, what the framework alone costs per poll on this machine; and
the same answer from a plain ASGI callable on the same Hypercorn config, no
framework: what the HTTP server alone costs per poll, the floor under any
route it serves (on a machine where that floor is above the target, the
target cannot be met by anything served through Hypercorn).

    python bench/status_polls.py [--clients 200] [--seconds 20] [--token admin|project]

Targets: net server CPU <= 10 % of a core, <= 0.5 ms CPU per poll.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import deploy_throughput
import httpx
from _harness import (
    CODE_ROOT,
    TOKEN,
    BenchEnv,
    Server,
    add_common_args,
    deploy_body,
    proc_cpu_seconds,
    summary,
    verdict,
)
from deploy_throughput import RawConnection, local_redis_pid

TARGET_SHARE = 0.10  # of one core, for 200 clients at 1 Hz
TARGET_MS = 0.5  # CPU per poll


def project_token(env: BenchEnv, path: Path) -> str:
    """A new token for the project at ``path`` (``deployster project token``)."""
    result = subprocess.run([sys.executable, "-m", "deployster", "project", "token", str(path)],
                            env=env.env(), cwd=CODE_ROOT, capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise SystemExit(f"project token failed: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


async def poll(url: str, targets: list[tuple[str, str]], seconds: float,
               ) -> tuple[Counter[int], list[float], Counter[str]]:
    """Each (job id, token) polled once a second by its own connection."""
    hostport = url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    began = time.monotonic()

    async def client(i: int, job_id: str, token: str) -> None:
        raw = (f"GET /status/{job_id} HTTP/1.1\r\nHost: {hostport}\r\n"
               f"x-deployster-token: {token}\r\n\r\n").encode()
        conn = RawConnection(host, int(port))
        tick = began + i / len(targets)  # spread over the second
        try:
            while tick < began + seconds:
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
                tick += 1.0
                started = time.perf_counter()
                try:
                    statuses[await asyncio.wait_for(conn.request(raw), 10)] += 1
                except (OSError, ValueError, EOFError, TimeoutError,
                        asyncio.IncompleteReadError) as exc:
                    errors[type(exc).__name__] += 1
                    conn.close()
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            conn.close()

    await asyncio.gather(*(client(i, j, t) for i, (j, t) in enumerate(targets)))
    return statuses, latencies, errors


@dataclass
class Figures:
    polls: int
    statuses: Counter[int]
    errors: Counter[str]
    latencies: list[float]
    idle_s: float  # server CPU seconds over the idle span
    busy_s: float  # server CPU seconds over the polling span
    redis_ms: float | None  # local Redis CPU ms per poll, net of idle

    def share(self, seconds: float) -> float:
        """Net server CPU while polling, as a share of one core."""
        return max(0.0, self.busy_s - self.idle_s) / seconds

    def per_poll_ms(self) -> float:
        return max(0.0, self.busy_s - self.idle_s) * 1000 / max(1, self.polls)


def cpu_seconds(pids: list[int | None]) -> list[float]:
    return [proc_cpu_seconds(p) if p else 0.0 for p in pids]


def measure(server: Server, redis_pid: int | None, targets: list[tuple[str, str]],
            seconds: float, *, idle: bool = True) -> Figures:
    """``seconds`` without polling (unless not ``idle``: a server with no work of
    its own), then ``seconds`` of polling, CPU read over each."""
    pids = [server.pid, redis_pid]
    before = cpu_seconds(pids)
    if idle:
        time.sleep(seconds)
    middle = cpu_seconds(pids)
    statuses, latencies, errors = asyncio.run(poll(server.url, targets, seconds))
    after = cpu_seconds(pids)
    idle = [m - b for m, b in zip(middle, before, strict=True)]
    busy = [a - m for a, m in zip(after, middle, strict=True)]
    polls = sum(statuses.values())
    redis_ms = max(0.0, busy[1] - idle[1]) * 1000 / max(1, polls) if redis_pid else None
    return Figures(polls, statuses, errors, latencies, idle[0], busy[0], redis_ms)


def report(label: str, f: Figures, seconds: float) -> None:
    lat = summary(f.latencies) if f.latencies else {}
    redis = f"; Redis {f.redis_ms:.3f} ms" if f.redis_ms is not None else ""
    print(f"  {label:<10} {f.polls} polls, statuses {dict(f.statuses)}, errors "
          f"{dict(f.errors)}; latency p50 {lat.get('p50', 0):.2f} ms, p99 "
          f"{lat.get('p99', 0):.2f} ms")
    print(f"  {'':<10} server CPU {f.busy_s / seconds:.1%} of a core while polling, "
          f"{f.idle_s / seconds:.1%} idle, net {f.share(seconds):.1%}; "
          f"{f.per_poll_ms():.3f} ms CPU per poll{redis}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="polling time measured per round and server")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each deployster then the two references (medians)")
    parser.add_argument("--token", choices=("admin", "project"), default="admin",
                        help="the token the pollers send (project: each its project's)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.clients < args.projects or args.projects < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error("need --projects >= 1, --clients >= --projects, --seconds and --rounds > 0")

    with BenchEnv("polls", args.redis_url, args.database_url, args.keep) as env:
        gate = env.tmp / "gate"
        env.write_stub("supervisorctl", "exit 0\n")
        paths = [env.project(f"app-{p:02d}") for p in range(args.projects)]
        tokens = ([project_token(env, p) for p in paths] if args.token == "project"
                  else [TOKEN] * len(paths))
        server = env.serve()
        limit = int(3 * args.rounds * args.seconds + 60)  # a bound on the printing jobs' life
        talk = (f"i=0; while [ ! -e '{gate}' ] && [ $i -lt {limit} ]; do "
                "echo \"line $i of a slow build\"; i=$((i+1)); sleep 1; done")
        targets: list[tuple[str, str]] = []
        admin = {"x-deployster-token": TOKEN}
        with httpx.Client(base_url=server.url, headers=admin, timeout=30) as http:
            for k in range(args.clients):
                p = k % args.projects
                reply = http.post("/deploy", json=deploy_body(
                    paths[p], talk if k < args.projects else "true", commit=f"{k:07x}"))
                if reply.status_code != 200:
                    raise SystemExit(f"POST /deploy -> {reply.status_code}: {reply.text}")
                targets.append((reply.json()["job_id"], tokens[p]))
            time.sleep(1.0)  # the first jobs are running and printing
            queued = sum(http.get(f"/status/{j}").json()["status"] == "queued"
                         for j, _ in targets)
        redis_pid = local_redis_pid(env.redis_url)
        script = str(Path(deploy_throughput.__file__).resolve())
        bare_server = env.serve(argv=[sys.executable, script, "--bare-server"])
        asgi_server = env.serve(argv=[sys.executable, script, "--bare-asgi-server"])
        print(f"status_polls: {args.clients} clients at 1 Hz, {args.rounds} rounds of "
              f"{args.seconds:g}s per server, {args.token} token; {queued} of their jobs "
              f"queued, the rest running (redis {env.redis_kind}, {env.database_kind})")
        ours: list[Figures] = []
        bare: list[Figures] = []
        asgi: list[Figures] = []
        for n in range(1, args.rounds + 1):
            print(f" round {n} (load avg {os.getloadavg()[0]:.2f})")
            ours.append(measure(server, redis_pid, targets, args.seconds))
            report("deployster", ours[-1], args.seconds)
            bare.append(measure(bare_server, None, targets, args.seconds, idle=False))
            report("bare", bare[-1], args.seconds)
            asgi.append(measure(asgi_server, None, targets, args.seconds, idle=False))
            report("asgi only", asgi[-1], args.seconds)
        gate.touch()

    share = statistics.median(f.share(args.seconds) for f in ours)
    per_poll = statistics.median(f.per_poll_ms() for f in ours)
    bare_ms = statistics.median(f.per_poll_ms() for f in bare)
    asgi_ms = statistics.median(f.per_poll_ms() for f in asgi)
    ratio = statistics.median(o.per_poll_ms() / b.per_poll_ms()
                              for o, b in zip(ours, bare, strict=True) if b.per_poll_ms())
    print(f"  median CPU per poll: deployster {per_poll:.3f} ms, a bare Quart+Hypercorn GET "
          f"{bare_ms:.3f} ms; deployster/bare {ratio:.2f} (median of the rounds' ratios)  "
          f"[target <= {TARGET_MS} ms: {verdict(per_poll <= TARGET_MS)}]")
    print(f"  Hypercorn alone (a plain ASGI callable, same answer): {asgi_ms:.3f} ms CPU per "
          f"poll, {asgi_ms * args.clients / 10:.1f} % of a core for {args.clients} clients; "
          f"deployster/Hypercorn alone {per_poll / asgi_ms if asgi_ms else 0:.2f}")
    print(f"  median server CPU, net: {share:.1%} of a core  [target <= {TARGET_SHARE:.0%}: "
          f"{verdict(share <= TARGET_SHARE)}]")
    ok = all(f.polls and not f.errors and set(f.statuses) == {200} for f in ours)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
