#!/usr/bin/env python
"""Hand-off latency: one job's last command -> the next queued job's first command.

N jobs of one project are posted while the first one is held at a gate, so all
the others are queued behind it. Every job's first command appends
``first <job id> <ns timestamp>`` to a stamps file; its last command is
``supervisorctl restart …``, served by a stub on the server's PATH that appends
``last <job id> <ns timestamp>``. When the gate opens the queue runs through;
the gaps between job k's ``last`` and job k+1's ``first`` are the hand-off
latency (they include ending the shell, recording the end, releasing the lock,
claiming the next job, loading it and spawning its first command). The
project's deploy steps around the restart (``supervisorctl reread``/``update``
before it, the wait for ``RUNNING`` after it) are off, so the restart is the
last command; its directory is no git work tree, so no checkout runs
(``docs/runner.md``).

    python bench/handoff.py [--jobs 100] [--redis-url URL] [--database-url PG_URL]

Target: p99 <= 5 ms (the floor: one Redis round trip and a fork/exec of sh;
the seed polled every 3 s). The floor is measured too, in the same run
(``--floor``, default as many as ``--jobs``): this script itself runs the same
last command, waits for its shell to exit, makes one Redis round trip and
starts the same first command, with nothing else in between; the ratio of the
server's figures to the floor's says how much of the hand-off is deployster's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
from _harness import BenchEnv, add_common_args, deploy_body, headers, summary, verdict, wait_until

TARGET_P99_MS = 5.0


def parse_stamps(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    if not path.exists():
        return first, last
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[2].isdigit():
            continue
        kind, job_id, stamp = parts[0], parts[1], int(parts[2])
        if kind == "first":
            first[job_id] = stamp
        elif kind == "last":
            last[job_id] = stamp
    return first, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100, help="jobs to queue (>= 2; default 100)")
    parser.add_argument("--slowest", type=int, default=3,
                        help="also list the N slowest hand-offs with their place in the queue")
    parser.add_argument("--floor", type=int, default=None,
                        help="hand-offs of the floor measurement (default: --jobs; 0: skip)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="give up after this many seconds of running the queue")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.jobs < 2:
        parser.error("--jobs must be at least 2")

    with BenchEnv("handoff", args.redis_url, args.database_url, args.keep) as env:
        stamps = env.tmp / "stamps"
        gate = env.tmp / "gate"
        env.write_stub("supervisorctl",
                       f'echo "last $DEPLOYSTER_JOB_ID $(date +%s%N)" >> \'{stamps}\'\n')
        project = env.project("handoff-app", "--no-supervisor-update", "--verify-window", "0")
        server = env.serve()

        stamp_first = f'echo "first $DEPLOYSTER_JOB_ID $(date +%s%N)" >> \'{stamps}\''
        ticks = int(args.timeout * 100)
        hold = (f"i=0; while [ ! -e '{gate}' ] && [ $i -lt {ticks} ]; do sleep 0.01; "
                "i=$((i+1)); done")

        job_ids: list[str] = []
        post_ms: list[float] = []
        queued = 0
        with httpx.Client(base_url=server.url, headers=headers(), timeout=30) as client:
            for k in range(args.jobs):
                commands = [stamp_first, hold] if k == 0 else [stamp_first]
                started = time.perf_counter()
                reply = client.post("/deploy",
                                    json=deploy_body(project, *commands, commit=f"{k:07x}"))
                post_ms.append((time.perf_counter() - started) * 1000)
                if reply.status_code != 200:
                    raise SystemExit(f"POST /deploy -> {reply.status_code}: {reply.text}")
                body = reply.json()
                job_ids.append(body["job_id"])
                queued += bool(body.get("queued"))
            gate.touch()
            opened = time.monotonic()

            def all_done() -> bool:
                return len(parse_stamps(stamps)[1]) >= args.jobs

            wait_until(all_done, timeout=args.timeout, interval=0.05,
                       what=f"{args.jobs} jobs to run their last command")
            drained = time.monotonic() - opened
            final = client.get(f"/status/{job_ids[-1]}").json()

        first, last = parse_stamps(stamps)
        order = sorted(first, key=first.__getitem__)
        indexed = [
            (k + 1, (first[nxt] - last[prev]) / 1e6)
            for k, (prev, nxt) in enumerate(itertools.pairwise(order))
            if prev in last
        ]
        gaps_ms = [gap for _, gap in indexed]
        fifo = order == job_ids

        print(f"handoff: {args.jobs} jobs of one project, {len(gaps_ms)} hand-offs "
              f"(redis {env.redis_kind}, {env.database_kind}, {os.cpu_count()} CPUs, "
              f"load avg {os.getloadavg()[0]:.2f})")
        print(f"  queued behind the first: {queued}/{args.jobs - 1}; FIFO order kept: "
              f"{'yes' if fifo else 'NO'}; last job: {final.get('status')}")
        if not gaps_ms:
            print("  no hand-offs measured")
            return 1
        s = summary(gaps_ms)
        print(f"  hand-off p50 {s['p50']:7.2f} ms")
        print(f"  hand-off p99 {s['p99']:7.2f} ms   target <= {TARGET_P99_MS:g} ms: "
              f"{verdict(s['p99'] <= TARGET_P99_MS)}")
        print(f"  hand-off max {s['max']:7.2f} ms   (min {s['min']:.2f}, mean {s['mean']:.2f})")
        print(f"  queue of {args.jobs} drained in {drained:.2f}s "
              f"({args.jobs / drained:.1f} jobs/s); POST /deploy p50 "
              f"{summary(post_ms)['p50']:.2f} ms while enqueueing")
        if args.slowest > 0:
            worst = sorted(indexed, key=lambda item: -item[1])[: args.slowest]
            print("  slowest: " + ", ".join(f"#{k}->#{k + 1} {gap:.1f} ms" for k, gap in worst))
        rounds = args.jobs if args.floor is None else args.floor
        if rounds > 0:
            floor = summary(measure_floor(env, stamp_first, rounds))
            print(f"  floor (same commands, one Redis round trip, nothing else; {rounds} "
                  f"rounds): p50 {floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms")
            print(f"  deployster / floor: p50 {s['p50'] / floor['p50']:.2f}x, "
                  f"p99 {s['p99'] / floor['p99']:.2f}x")
    return 0


def measure_floor(env: BenchEnv, stamp_first: str, rounds: int) -> list[float]:
    """The hand-off with nothing but its unavoidable parts, in ms per round:
    the last command's shell exits and is reaped, one Redis round trip (the
    claim), the next first command's shell is started and stamps its time."""
    stamps = env.tmp / "floor-stamps"
    path = f"{env.stub_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    base = {**os.environ, "PATH": path}
    last_cmd = ["/bin/sh", "-c", "supervisorctl restart handoff-app"]
    client = redis.Redis.from_url(env.redis_url)
    gaps: list[float] = []
    try:
        for k in range(rounds):
            job = f"floor{k}"
            env_k = {**base, "DEPLOYSTER_JOB_ID": job}
            stamps.unlink(missing_ok=True)
            subprocess.run(last_cmd, env=env_k, cwd=env.tmp, check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            client.ping()
            subprocess.run(["/bin/sh", "-c", stamp_first.replace(str(env.tmp / "stamps"),
                                                                 str(stamps))],
                           env=env_k, cwd=env.tmp, check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL)
            # The stub stamps the real stamps file; read both of this round's.
            first, _ = parse_stamps(stamps)
            _, last = parse_stamps(env.tmp / "stamps")
            if job in first and job in last:
                gaps.append((first[job] - last[job]) / 1e6)
    finally:
        client.close()
    return gaps


if __name__ == "__main__":
    sys.exit(main())
