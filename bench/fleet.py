#!/usr/bin/env python
"""One node against three: hand-off latency and POST /deploy throughput.

Three ``deployster serve`` processes on this machine, each a node (its own
``DEPLOYSTER_NODE`` and data dir) on one Redis and one PostgreSQL, against one
alone (README.md#several-hosts). With three, every deploy is sent to another
node than the project's (``"node"`` in the body), so the figures carry the
cross-node path: the job is queued by one server and claimed by its own.

- hand-off: ``--jobs`` jobs of web-1's project queued behind a held first job,
  time from job k's last command to job k+1's first (as bench/handoff.py);
- throughput: ``--requests`` POST /deploy over ``--concurrency`` connections
  (httpx), spread over the nodes, each project's lock held so all queue.

    python bench/fleet.py [--jobs 200] [--requests 2000] [--database-url PG_URL]

Needs PostgreSQL (SQLite is one node's): ``--database-url``, else the server on
127.0.0.1:5432 (database ``test``) when it answers. Ratios are 3 nodes / 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _harness import BenchEnv, Server, add_common_args, deploy_body, headers, summary, wait_until

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/test"


def pg_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return True
    except OSError:
        return False


def stamps_of(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, job, at = line.split()
        (first if kind == "first" else last)[job] = int(at)
    return first, last


def run(nodes: int, args: argparse.Namespace) -> dict[str, float]:
    with BenchEnv(f"fleet{nodes}", args.redis_url, args.database_url, args.keep) as env:
        stamps = env.tmp / "stamps"
        gate = env.tmp / "gate"
        env.write_stub("supervisorctl",
                       f'echo "last $DEPLOYSTER_JOB_ID $(date +%s%N)" >> \'{stamps}\'\n')
        names = [f"web-{k + 1}" for k in range(nodes)]
        servers: dict[str, Server] = {}
        projects: dict[str, Path] = {}
        for name in names:
            per_node = {"DEPLOYSTER_NODE": name,
                        "DEPLOYSTER_DATA_DIR": str(env.tmp / name / "data")}
            path = env.tmp / name / "app"
            path.mkdir(parents=True)
            # (not env.project(): that registers on the default node)
            done = subprocess.run(
                [sys.executable, "-m", "deployster", "project", "add", str(path),
                 "--no-supervisor-update", "--verify-window", "0"],
                env=env.env(**per_node), capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise SystemExit(f"project add on {name}: {done.stderr.strip()}")
            projects[name] = path
            servers[name] = env.serve(**per_node)
        # Hand-off on web-1's project, its deploys sent through another node.
        sender = servers[names[-1]]
        hold = (f"i=0; while [ ! -e '{gate}' ] && [ $i -lt 12000 ]; do sleep 0.01; "
                "i=$((i+1)); done")
        first_cmd = f'echo "first $DEPLOYSTER_JOB_ID $(date +%s%N)" >> \'{stamps}\''
        with httpx.Client(base_url=sender.url, headers=headers(), timeout=30) as client:
            for k in range(args.jobs):
                body = deploy_body(projects["web-1"], *([first_cmd, hold] if k == 0
                                                       else [first_cmd]), commit=f"{k:07x}")
                body["node"] = "web-1"
                reply = client.post("/deploy", json=body)
                if reply.status_code != 200:
                    raise SystemExit(f"POST /deploy: {reply.status_code} {reply.text}")
            gate.touch()
            wait_until(lambda: len(stamps_of(stamps)[1]) >= args.jobs, timeout=120,
                       interval=0.05, what="the queue to drain")
        first, last = stamps_of(stamps)
        order = sorted(first, key=first.__getitem__)
        gaps = [(first[b] - last[a]) / 1e6 for a, b in itertools.pairwise(order) if a in last]
        handoff = summary(gaps)
        # Throughput: every project's lock held, deploys spread over every node.
        gate.unlink()
        rate = asyncio.run(throughput(servers, projects, hold, args))
        gate.touch()
        return {"p50": handoff["p50"], "p99": handoff["p99"], "rate": rate}


async def throughput(servers: dict[str, Server], projects: dict[str, Path], hold: str,
                     args: argparse.Namespace) -> float:
    names = list(servers)
    clients = [httpx.AsyncClient(base_url=s.url, headers=headers(), timeout=60,
                                 limits=httpx.Limits(max_connections=args.concurrency))
               for s in servers.values()]
    try:
        for name, client in zip(names, clients, strict=True):  # hold each project's lock
            body = deploy_body(projects[name], hold, commit="hold")
            await client.post("/deploy", json=body)
        sem = asyncio.Semaphore(args.concurrency)

        async def one(k: int) -> None:
            owner = names[k % len(names)]
            via = clients[(k + 1) % len(clients)]  # another node than the owner's, if any
            body = deploy_body(projects[owner], f"echo {k}", commit=f"{k:07x}")
            body["node"] = owner
            async with sem:
                reply = await via.post("/deploy", json=body)
            if reply.status_code != 200:
                raise SystemExit(f"POST /deploy: {reply.status_code} {reply.text}")

        started = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(args.requests)))
        return args.requests / (time.perf_counter() - started)
    finally:
        for client in clients:
            await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="hand-off jobs (default 200)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="POST /deploy requests of the throughput run (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32)
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.database_url is None:
        if not pg_answers():
            print("fleet: needs PostgreSQL (--database-url); none on 127.0.0.1:5432. Skipped.")
            return 0
        args.database_url = LOCAL_PG
    one = run(1, args)
    three = run(3, args)
    print(f"fleet: hand-off over {args.jobs} jobs, {args.requests} POST /deploy "
          f"(concurrency {args.concurrency}, httpx)")
    for label, r in (("1 node ", one), ("3 nodes", three)):
        print(f"  {label}: hand-off p50 {r['p50']:6.2f} ms, p99 {r['p99']:6.2f} ms; "
              f"POST /deploy {r['rate']:7.0f} req/s")
    print(f"  3 nodes / 1: hand-off p50 {three['p50'] / one['p50']:.2f}x, "
          f"p99 {three['p99'] / one['p99']:.2f}x; throughput {three['rate'] / one['rate']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
