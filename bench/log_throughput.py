#!/usr/bin/env python
"""Log throughput: a job printing 1,000,000 lines, from its start to its full log in SQL.

One deploy runs ``seq 1 N`` (N = 1,000,000 by default: ~6.9 MB of 1-7 digit
lines) then the ``supervisorctl`` stub. ``--style lines`` prints ~34-byte lines
from an unbuffered Python loop instead: one small write per line, the worst
case for the pipe reader. The job's row in the history database
(SQLite in the temp dir, or a temporary PostgreSQL database) is polled every
20 ms until it says ``complete`` with its log; then the log is read back and
every one of the N lines is checked, in order.

Figures: lines/s over start -> log in history, and the split: running (the
job's started_at -> finished_at, i.e. the shell printing, the runner reading
the pipe and batching it into the Redis stream) and copying (finished_at -> the
row with its log visible in SQL: the history writer reading the stream and
upserting it).

    python bench/log_throughput.py [--lines 1000000] [--style seq|lines]
                                   [--redis-url URL] [--database-url PG_URL]

Target: >= 100k lines/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass

import httpx
import redis
from _harness import BenchEnv, add_common_args, deploy_body, headers, verdict
from databases import Database

from deployster.clock import parse_iso
from deployster.keys import Keys

TARGET_LINES_PER_S = 100_000


@dataclass
class Row:
    status: str
    started_at: str | None
    finished_at: str | None
    log_bytes: int | None
    seen_at: float  # local wall clock when the poll saw this row


async def wait_for_history(url: str, job_id: str, *, timeout: float,
                           interval: float = 0.02) -> tuple[Row, str]:
    """Poll the deployments row until it is finished and has its log."""
    db = Database(url)
    await db.connect()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = await db.fetch_one(
                "SELECT status, started_at, finished_at, log_bytes FROM deployments "
                "WHERE id = :id", {"id": job_id},
            )
            seen = time.time()
            if row is not None and row["status"] in ("complete", "failed") \
                    and row["log_bytes"] is not None:
                log = await db.fetch_val("SELECT log FROM deployments WHERE id = :id",
                                         {"id": job_id})
                return Row(row["status"], row["started_at"], row["finished_at"],
                           row["log_bytes"], seen), log or ""
            await asyncio.sleep(interval)
        raise TimeoutError(f"job {job_id} did not reach history in {timeout:g}s")
    finally:
        await db.disconnect()


def expected_line(style: str, i: int) -> str:
    return str(i) if style == "seq" else f"{i:07d} deploy log line for bench"


def job_command(style: str, n: int) -> str:
    if style == "seq":
        return f"seq 1 {n}"
    loop = (f"import sys; w = sys.stdout.write; [w(f'{{i:07d}} deploy log line for bench\\n') "
            f"for i in range(1, {n + 1})]")
    return f"{sys.executable} -u -c \"{loop}\""


def check_lines(log: str, n: int, style: str) -> tuple[int, str]:
    """Count the job's lines in ``log`` and say whether they are exactly 1..n in order."""
    lines = log.split("\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("[1/2] $ "))
    except StopIteration:
        return 0, "the command header is missing"
    body: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("[2/2] $ ") or line.startswith("[deployster]"):
            break
        body.append(line)
    expected = [expected_line(style, i) for i in range(1, n + 1)]
    if body == expected:
        return n, "all present, in order"
    count = len(set(body) & set(expected))
    for i, (got, want) in enumerate(zip(body, expected, strict=False), 1):
        if got != want:
            return count, f"first difference at line {i}: {got[:40]!r}"
    return count, f"{len(body)} lines where {n} were expected"


def seconds(start: str | None, end: str | None) -> float:
    a, b = parse_iso(start), parse_iso(end)
    if a is None or b is None:
        return float("nan")
    return (b - a).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000,
                        help="lines the job prints (default 1000000)")
    parser.add_argument("--style", choices=("seq", "lines"), default="seq",
                        help="seq: 'seq 1 N' (default); lines: ~34-byte lines, one "
                        "write each, from an unbuffered Python loop")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up after this many seconds (default 300)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.lines < 1:
        parser.error("--lines must be positive")

    with BenchEnv("logs", args.redis_url, args.database_url, args.keep) as env:
        env.write_stub("supervisorctl", 'echo "supervisorctl: $*"\n')
        project = env.project("log-app")
        server = env.serve()
        with httpx.Client(base_url=server.url, headers=headers(), timeout=30) as client:
            posted = time.time()
            reply = client.post("/deploy",
                                json=deploy_body(project, job_command(args.style, args.lines),
                                                 commit=os.urandom(4).hex()))
            if reply.status_code != 200:
                raise SystemExit(f"POST /deploy -> {reply.status_code}: {reply.text}")
            job_id = reply.json()["job_id"]
        row, log = asyncio.run(wait_for_history(env.database_url, job_id,
                                                timeout=args.timeout))
        verified_at = time.time()
        count, verdict_text = check_lines(log, args.lines, args.style)
        entries = None
        with redis.Redis.from_url(env.redis_url) as r:
            entries = r.xlen(Keys(env.namespace).log(job_id))

    started = parse_iso(row.started_at)
    start_ts = started.timestamp() if started else posted
    running = seconds(row.started_at, row.finished_at)
    total = row.seen_at - start_ts
    copying = total - running
    rate = args.lines / total if total > 0 else 0.0
    print(f"log_throughput: one job printing {args.lines:,} lines ({args.style}), "
          f"{row.log_bytes or 0:,} bytes of log in {entries} stream entries "
          f"(redis {env.redis_kind}, {env.database_kind}, {os.cpu_count()} CPUs, "
          f"load avg {os.getloadavg()[0]:.2f})")
    print(f"  job status {row.status}; lines in history: {count:,} of {args.lines:,} "
          f"({verdict_text})")
    print(f"  {rate:,.0f} lines/s from job start to full log in history "
          f"({total:.2f}s)   target >= {TARGET_LINES_PER_S:,}: "
          f"{verdict(rate >= TARGET_LINES_PER_S and count == args.lines)}")
    print(f"  split: running {running:.2f}s ({args.lines / running:,.0f} lines/s) + "
          f"copying to history {copying:.2f}s (poll every 20 ms; times from the row's "
          f"started_at/finished_at, ms precision)")
    print(f"  also: POST -> started {start_ts - posted:.3f}s; reading the log back and "
          f"checking it took {verified_at - row.seen_at:.2f}s (not counted)")
    return 0 if count == args.lines else 1


if __name__ == "__main__":
    sys.exit(main())
