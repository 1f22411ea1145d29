#!/usr/bin/env python
"""Racing clients: N concurrent POST /deploy over P projects, then the checks.

Every job's command appends ``start <tag> <ns timestamp>`` and ``end <tag> <ns
timestamp>`` to a stamps file in its project's directory (then the stub
``supervisorctl restart``). The requests are interleaved over the projects and
sent over ``--concurrency`` connections. Once every job has ended, per project:
no two jobs overlap (each starts after the previous one ended), jobs started in
acceptance order (sorted job ids: ULIDs are strictly increasing within the
server process), none lost (a start and an end for every accepted request), none
run twice (one start and one end per tag), and every job ended ``complete``.

    python bench/race.py [--requests 10000] [--projects 10] [--concurrency 64]

All of overlaps, order violations, lost, duplicated should be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import redis
from _harness import BenchEnv, add_common_args, deploy_body, headers

from deployster.keys import Keys

STAMPS = "race-stamps"


def stamp_command(stamps: Path, tag: str) -> str:
    return (f"echo \"start {tag} $(date +%s%N)\" >> '{stamps}'; "
            f"echo \"end {tag} $(date +%s%N)\" >> '{stamps}'")


def read_stamps(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            rows.append((parts[0], parts[1], int(parts[2])))
    return rows


async def fire(url: str, bodies: list[tuple[str, dict[str, object]]],
               concurrency: int) -> dict[str, tuple[int, dict[str, object]]]:
    """POST every body over ``concurrency`` connections; tag -> (status, reply)."""
    replies: dict[str, tuple[int, dict[str, object]]] = {}
    work = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers(), timeout=120,
                                 limits=limits) as client:
        async def worker() -> None:
            for tag, body in work:  # the shared iterator hands each body out once
                try:
                    reply = await client.post("/deploy", json=body)
                    replies[tag] = (reply.status_code, reply.json())
                except httpx.HTTPError as exc:
                    replies[tag] = (0, {"error": repr(exc)})

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return replies


def job_statuses(redis_url: str, keys: Keys, job_ids: list[str]) -> dict[str, str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        pipe = client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "status")
        return {j: s or "missing" for j, s in zip(job_ids, pipe.execute(), strict=True)}
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="deploys (default 10000)")
    parser.add_argument("--projects", type=int, default=10, help="projects (default 10)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="concurrent connections (default 64)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="give up waiting for the queues to drain after this many s")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.projects < 1 or args.concurrency < 1:
        parser.error("--requests, --projects and --concurrency must be positive")

    with BenchEnv("race", args.redis_url, args.database_url, args.keep) as env:
        env.write_stub("supervisorctl", 'echo "supervisorctl: $*"\n')
        dirs = [env.project(f"race-{p}") for p in range(args.projects)]
        server = env.serve()
        keys = Keys(env.namespace)

        project_of: dict[str, int] = {}
        bodies: list[tuple[str, dict[str, object]]] = []
        for n in range(args.requests):
            p = n % args.projects
            tag = f"p{p}-r{n // args.projects}"
            project_of[tag] = p
            bodies.append((tag, deploy_body(dirs[p], stamp_command(dirs[p] / STAMPS, tag),
                                            commit=f"{n:08x}")))

        began = time.monotonic()
        replies = asyncio.run(fire(server.url, bodies, args.concurrency))
        accepted_s = time.monotonic() - began

        rejected = {t: r for t, r in replies.items() if r[0] != 200 or "job_id" not in r[1]}
        job_of = {t: str(r[1]["job_id"]) for t, r in replies.items() if t not in rejected}
        distinct = len(set(job_of.values()))

        # Drain: every accepted job has ended (bounded wait).
        deadline = time.monotonic() + args.timeout
        statuses: dict[str, str] = {}
        while True:
            statuses = job_statuses(env.redis_url, keys, list(job_of.values()))
            waiting = sum(s in ("queued", "running") for s in statuses.values())
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        drained_s = time.monotonic() - began
        status_count = Counter(statuses.values())

        overlaps = order_violations = lost = duplicated = 0
        for p, path in enumerate(dirs):
            rows = read_stamps(path / STAMPS)
            tags = [t for t in job_of if project_of[t] == p]
            starts = Counter(t for kind, t, _ in rows if kind == "start")
            ends = Counter(t for kind, t, _ in rows if kind == "end")
            lost += sum(1 for t in tags if starts[t] == 0 or ends[t] == 0)
            duplicated += sum(1 for t in tags if starts[t] > 1 or ends[t] > 1)
            start_ns = {t: ns for kind, t, ns in rows if kind == "start"}
            end_ns = {t: ns for kind, t, ns in rows if kind == "end"}
            ran = [t for t in tags if t in start_ns and t in end_ns]
            by_start = sorted(ran, key=start_ns.__getitem__)
            overlaps += sum(1 for a, b in itertools.pairwise(by_start)
                            if start_ns[b] < end_ns[a])
            accepted = sorted(ran, key=job_of.__getitem__)
            order_violations += sum(1 for a, b in zip(by_start, accepted, strict=True) if a != b)

        n = args.requests
        print(f"race: {n} POST /deploy over {args.projects} projects, {args.concurrency} "
              f"connections (redis {env.redis_kind}, {env.database_kind}, {os.cpu_count()} "
              f"CPUs, load avg {os.getloadavg()[0]:.2f})")
        print(f"  accepted {len(job_of)}/{n} in {accepted_s:.2f}s: {len(job_of) / accepted_s:.0f} "
              f"req/s; distinct job ids {distinct}; rejected {len(rejected)}")
        if rejected:
            tag, reply = next(iter(rejected.items()))
            print(f"    e.g. {tag}: {reply}")
        print(f"  drained in {drained_s:.2f}s from the first request "
              f"({len(job_of) / drained_s:.1f} jobs/s); statuses {dict(status_count)}")
        print(f"  overlaps {overlaps}  order violations {order_violations}  lost {lost}  "
              f"duplicated {duplicated}")
        ok = (not rejected and distinct == n and status_count.get("complete", 0) == n
              and overlaps == order_violations == lost == duplicated == 0)
        print(f"  checks: {'all passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
