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

    python bench/handoff.py [--jobs 100] [--notify] [--redis-url URL] [--database-url PG_URL]

Target: p99 <= 5 ms (the floor: one Redis round trip and a fork/exec of sh;
the seed polled every 3 s). The floor is measured too, in the same run
(``--floor``, default as many as ``--jobs``): this script itself runs the same
last command, waits for its shell to exit, makes one Redis round trip and
starts the same first command, with nothing else in between; the ratio of the
server's figures to the floor's says how much of the hand-off is deployster's.

``--notify`` measures a second project on the same server, with two webhook
targets (local endpoints, ``_harness.Sink``) that want ``--notify-on``'s events
(default ``complete,failed``, what a project gets by default; ``all``: every
one), the two series alternated for ``--rounds`` (3), and prints the medians
of both, and the server's CPU per job with and without: the cost of
notifications on the hand-off, read in one run. The target holds for both.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from _harness import (
    BenchEnv,
    Sink,
    add_common_args,
    deploy_body,
    headers,
    notify_options,
    proc_cpu_seconds,
    summary,
    verdict,
    wait_for_notifications,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

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


@dataclass
class QueueRun:
    """One queue of jobs run through: the hand-off gaps and what came with them."""

    gaps: list[tuple[int, float]]  # (place in the queue, ms)
    queued: int
    fifo: bool
    final: str
    drained: float
    post_ms: list[float]
    server_cpu_ms: float  # the server's CPU per job from the gate's opening to the drain


def run_queue(client: httpx.Client, project: Path, stamps: Path, gate: Path, jobs: int,
              timeout: float, server_pid: int) -> QueueRun:
    """Queue ``jobs`` jobs of ``project`` behind a first one held at ``gate``,
    open the gate, and measure the hand-offs from the ``stamps`` they write."""
    stamp_first = f'echo "first $DEPLOYSTER_JOB_ID $(date +%s%N)" >> \'{stamps}\''
    ticks = int(timeout * 100)
    hold = (f"i=0; while [ ! -e '{gate}' ] && [ $i -lt {ticks} ]; do sleep 0.01; "
            "i=$((i+1)); done")
    job_ids: list[str] = []
    post_ms: list[float] = []
    queued = 0
    for k in range(jobs):
        commands = [stamp_first, hold] if k == 0 else [stamp_first]
        started = time.perf_counter()
        reply = client.post("/deploy", json=deploy_body(project, *commands, commit=f"{k:07x}"))
        post_ms.append((time.perf_counter() - started) * 1000)
        if reply.status_code != 200:
            raise SystemExit(f"POST /deploy -> {reply.status_code}: {reply.text}")
        body = reply.json()
        job_ids.append(body["job_id"])
        queued += bool(body.get("queued"))
    cpu_before = proc_cpu_seconds(server_pid)
    gate.touch()
    opened = time.monotonic()

    def all_done() -> bool:
        return len(parse_stamps(stamps)[1]) >= jobs

    wait_until(all_done, timeout=timeout, interval=0.05,
               what=f"{jobs} jobs to run their last command")
    drained = time.monotonic() - opened
    cpu_ms = (proc_cpu_seconds(server_pid) - cpu_before) * 1000 / jobs
    final = client.get(f"/status/{job_ids[-1]}").json().get("status", "?")
    first, last = parse_stamps(stamps)
    order = sorted(first, key=first.__getitem__)
    gaps = [(k + 1, (first[nxt] - last[prev]) / 1e6)
            for k, (prev, nxt) in enumerate(itertools.pairwise(order)) if prev in last]
    return QueueRun(gaps, queued, order == job_ids, final, drained, post_ms, cpu_ms)


def report(run: QueueRun, label: str, jobs: int, slowest: int) -> bool:
    """Print one queue's figures; False when none were measured."""
    gaps_ms = [gap for _, gap in run.gaps]
    print(f"  {label}:")
    print(f"    queued behind the first: {run.queued}/{jobs - 1}; FIFO order kept: "
          f"{'yes' if run.fifo else 'NO'}; last job: {run.final}")
    if not gaps_ms:
        print("    no hand-offs measured")
        return False
    s = summary(gaps_ms)
    print(f"    hand-off p50 {s['p50']:7.2f} ms")
    print(f"    hand-off p99 {s['p99']:7.2f} ms   target <= {TARGET_P99_MS:g} ms: "
          f"{verdict(s['p99'] <= TARGET_P99_MS)}")
    print(f"    hand-off max {s['max']:7.2f} ms   (min {s['min']:.2f}, mean {s['mean']:.2f})")
    print(f"    queue of {jobs} drained in {run.drained:.2f}s ({jobs / run.drained:.1f} jobs/s); "
          f"POST /deploy p50 {summary(run.post_ms)['p50']:.2f} ms while enqueueing; "
          f"server CPU {run.server_cpu_ms:.2f} ms per job while draining")
    if slowest > 0:
        worst = sorted(run.gaps, key=lambda item: -item[1])[:slowest]
        print("    slowest: " + ", ".join(f"#{k}->#{k + 1} {gap:.1f} ms" for k, gap in worst))
    return True


def server_handoff(page: str) -> str:
    """The server's own hand-off figure, every queue of the run together, from
    its ``GET /metrics`` page: from the claim to the first process started (no
    shell exit, no ``date``), so a little under the gaps above."""
    samples = {(s.name, s.labels.get("le")): s.value
               for family in text_string_to_metric_families(page)
               if family.name == "deployster_handoff_seconds" for s in family.samples}
    count = samples[("deployster_handoff_seconds_count", None)]
    if not count:
        return "GET /metrics: no hand-off counted"
    mean_ms = samples[("deployster_handoff_seconds_sum", None)] / count * 1000
    bounds = sorted((float(le), n) for (name, le), n in samples.items()
                    if name.endswith("_bucket") and le is not None)
    p99 = next(le for le, n in bounds if n >= 0.99 * count)
    return (f"GET /metrics: {count:.0f} hand-offs (claim -> first process), mean "
            f"{mean_ms:.2f} ms, p99 <= {p99 * 1000:g} ms (its bucket)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100, help="jobs to queue (>= 2; default 100)")
    parser.add_argument("--slowest", type=int, default=3,
                        help="also list the N slowest hand-offs with their place in the queue")
    parser.add_argument("--floor", type=int, default=None,
                        help="hand-offs of the floor measurement (default: --jobs; 0: skip)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="give up after this many seconds of running the queue")
    parser.add_argument("--notify", action="store_true",
                        help="also measure a project with two webhook targets")
    parser.add_argument("--rounds", type=int, default=0,
                        help="queues run per series, alternated (default 1; 3 with --notify)")
    parser.add_argument("--notify-on", default="complete,failed", metavar="EVENTS",
                        help="the events of those targets (default complete,failed, as a "
                             "project gets by default; 'all' for every one)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.jobs < 2:
        parser.error("--jobs must be at least 2")

    sinks = [Sink(), Sink()] if args.notify else []
    rounds = args.rounds or (3 if sinks else 1)
    with BenchEnv("handoff", args.redis_url, args.database_url, args.keep) as env:
        # Each job runs in its project's directory: the stamps file is there.
        env.write_stub("supervisorctl",
                       'echo "last $DEPLOYSTER_JOB_ID $(date +%s%N)" >> stamps\n')
        steps = ("--no-supervisor-update", "--verify-window", "0")
        projects = [("no notification targets", env.project("handoff-app", *steps))]
        if sinks:
            projects.append((f"two webhook targets ({args.notify_on})", env.project(
                "handoff-notify", *steps, *notify_options(env, *sinks, events=args.notify_on))))
        server = env.serve()
        runs: dict[str, list[QueueRun]] = {label: [] for label, _ in projects}
        with httpx.Client(base_url=server.url, headers=headers(), timeout=30) as client:
            # The series alternate, so a change in the machine's other load hits each alike.
            for round_no in range(rounds):
                for label, project in projects:
                    (project / "stamps").unlink(missing_ok=True)
                    wait_for_notifications(env)  # the last run's must not weigh on this one
                    runs[label].append(run_queue(
                        client, project, project / "stamps",
                        env.tmp / f"gate-{label[:2]}-{round_no}", args.jobs, args.timeout,
                        server.pid))
            scraped = client.get("/metrics")  # 404 from a checkout without it
        print(f"handoff: {args.jobs} jobs of one project, {args.jobs - 1} hand-offs "
              f"x {rounds} round(s) (redis {env.redis_kind}, {env.database_kind}, "
              f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f})")
        measured = []
        for label, series in runs.items():
            for round_no, run in enumerate(series, 1):
                name = label if rounds == 1 else f"{label}, round {round_no}"
                measured.append(report(run, name, args.jobs, args.slowest))
        if scraped.status_code == 200:
            print("  " + server_handoff(scraped.text))
        plain = runs[projects[0][0]]
        floor_rounds = args.jobs if args.floor is None else args.floor
        if floor_rounds > 0 and all(r.gaps for r in plain):
            floor = summary(measure_floor(env, floor_rounds))
            s = {k: statistics.median(summary([g for _, g in r.gaps])[k] for r in plain)
                 for k in ("p50", "p99")}
            print(f"  floor (same commands, one Redis round trip, nothing else; {floor_rounds} "
                  f"rounds): p50 {floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms")
            print(f"  deployster (no notification targets) / floor: p50 "
                  f"{s['p50'] / floor['p50']:.2f}x, p99 {s['p99'] / floor['p99']:.2f}x")
        if sinks:
            p99 = {label: statistics.median(summary([g for _, g in r.gaps])["p99"]
                                            for r in series) for label, series in runs.items()}
            cpu = {label: statistics.median(r.server_cpu_ms for r in series)
                   for label, series in runs.items()}
            (plain, with_targets) = runs
            print(f"  medians over {rounds} rounds: hand-off p99 {p99[plain]:.2f} ms without "
                  f"targets, {p99[with_targets]:.2f} ms with two (x"
                  f"{p99[with_targets] / p99[plain]:.2f}); server CPU per job "
                  f"{cpu[plain]:.2f} / {cpu[with_targets]:.2f} ms; webhook requests received: "
                  f"{sum(s.count for s in sinks)}")
    for sink in sinks:
        sink.close()
    return 0 if all(measured) else 1


def measure_floor(env: BenchEnv, rounds: int) -> list[float]:
    """The hand-off with nothing but its unavoidable parts, in ms per round:
    the last command's shell exits and is reaped, one Redis round trip (the
    claim), the next first command's shell is started and stamps its time."""
    stamps = env.tmp / "floor-stamps"
    stamp_first = f'echo "first $DEPLOYSTER_JOB_ID $(date +%s%N)" >> \'{stamps}\''
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
            subprocess.run(["/bin/sh", "-c", stamp_first],
                           env=env_k, cwd=env.tmp, check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL)
            # The stub stamps "stamps" in its working directory; read both of this round's.
            first, _ = parse_stamps(stamps)
            _, last = parse_stamps(env.tmp / "stamps")
            if job in first and job in last:
                gaps.append((first[job] - last[job]) / 1e6)
    finally:
        client.close()
    return gaps


if __name__ == "__main__":
    sys.exit(main())
