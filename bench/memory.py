#!/usr/bin/env python
"""Memory after a big job: does the server give back what one big log took?

A served deployster runs a small job (the warm-up: every code path loaded),
then its idle figures are taken: the server's RSS and Redis's ``used_memory``.
Then one job prints ``--lines`` (800,000) lines of 47 bytes (37.6 MB); once its
row in the history database holds the whole log, both are sampled each second
for ``--watch`` seconds (70): when the job's log stream left Redis, and where
the server's RSS and Redis's memory settle, against the idle figures.

    python bench/memory.py [--lines 800000] [--watch 70] [--redis-url URL|embedded]
                           [--database-url PG_URL]

Targets: the log stream gone from Redis at most 60 s after the log
is in SQL; the server's RSS back within 10 MB of idle. By default the bench
runs its own embedded Redis, so no other user's keys move its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import httpx
import redis
from _harness import BenchEnv, add_common_args, deploy_body, headers, verdict
from log_throughput import wait_for_history

from deployster.keys import Keys

LINE_BYTES = 47  # with its newline
TARGET_DROP_S = 60.0
TARGET_RSS_MB = 10.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def redis_mb(client: redis.Redis) -> float:
    return int(client.info("memory")["used_memory"]) / 2**20


def job_command(lines: int) -> str:
    # 7 digits, a space, 38 letters and the newline: 47 bytes a line.
    loop = (f"import sys; w = sys.stdout.write; pad = 'x' * {LINE_BYTES - 9}; "
            f"[w(f'{{i:07d}} {{pad}}\\n') for i in range(1, {lines + 1})]")
    return f"{sys.executable} -u -c \"{loop}\""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=800_000,
                        help="lines the big job prints (default 800000: 37.6 MB)")
    parser.add_argument("--watch", type=float, default=70.0,
                        help="seconds to sample after the log reached SQL (default 70)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up on the big job after this many seconds")
    add_common_args(parser)
    args = parser.parse_args(argv)
    with BenchEnv("memory", args.redis_url or "embedded", args.database_url, args.keep) as env:
        env.write_stub("supervisorctl", 'echo "supervisorctl: $*"\n')
        project = env.project("memory-app", "--no-supervisor-update", "--verify-window", "0")
        server = env.serve()
        keys = Keys(env.namespace)
        r = redis.Redis.from_url(env.redis_url)

        def deploy(command: str) -> str:
            with httpx.Client(base_url=server.url, headers=headers(), timeout=30) as client:
                reply = client.post("/deploy", json=deploy_body(
                    project, command, commit=os.urandom(4).hex()))
            if reply.status_code != 200:
                raise SystemExit(f"POST /deploy -> {reply.status_code}: {reply.text}")
            return str(reply.json()["job_id"])

        warm = deploy("echo warm-up")
        asyncio.run(wait_for_history(env.database_url, warm, timeout=60))
        time.sleep(3)
        idle_rss, idle_redis = rss_mb(server.pid), redis_mb(r)

        big = deploy(job_command(args.lines))
        row, log = asyncio.run(wait_for_history(env.database_url, big, timeout=args.timeout))
        in_sql = time.monotonic()
        peak_rss, peak_redis = rss_mb(server.pid), redis_mb(r)
        dropped_after: float | None = None
        samples: list[tuple[float, float, float]] = []
        while (waited := time.monotonic() - in_sql) < args.watch:
            if dropped_after is None and not r.exists(keys.log(big)):
                dropped_after = waited
            samples.append((waited, rss_mb(server.pid), redis_mb(r)))
            time.sleep(1.0)
        end_rss, end_redis = rss_mb(server.pid), redis_mb(r)
        r.close()

    print(f"memory: one job printing {args.lines:,} lines, {row.log_bytes or 0:,} bytes of "
          f"log in SQL ({len(log):,} chars read back); redis {env.redis_kind}, "
          f"{env.database_kind}, load avg {os.getloadavg()[0]:.2f}")
    print(f"  server RSS   idle {idle_rss:6.1f} MB  at SQL {peak_rss:6.1f} MB  "
          f"after {args.watch:g}s {end_rss:6.1f} MB  (+{end_rss - idle_rss:.1f} MB, "
          f"{end_rss / idle_rss:.2f}x idle)   target within {TARGET_RSS_MB:g} MB: "
          f"{verdict(end_rss - idle_rss <= TARGET_RSS_MB)}")
    print(f"  redis memory idle {idle_redis:6.1f} MB  at SQL {peak_redis:6.1f} MB  "
          f"after {args.watch:g}s {end_redis:6.1f} MB  (+{end_redis - idle_redis:.1f} MB)")
    dropped = "still there" if dropped_after is None else f"{dropped_after:.0f}s"
    print(f"  log stream left Redis after the log reached SQL: {dropped}   target <= "
          f"{TARGET_DROP_S:g}s: "
          f"{verdict(dropped_after is not None and dropped_after <= TARGET_DROP_S)}")
    print("  samples (s after SQL: server RSS MB, redis MB): " + ", ".join(
        f"{t:.0f}: {a:.0f}/{b:.0f}" for t, a, b in samples[:: max(1, len(samples) // 8)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
