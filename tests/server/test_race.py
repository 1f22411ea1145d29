"""Racing clients: 1,000 concurrent deploys over 10 projects (docs/redis.md#the-queue).

Every job's command stamps ``start <tag> <ns>`` and ``end <tag> <ns>`` into a
file in its project's directory. Once the queues have drained: no two jobs of
one project overlapped, each project's jobs started in acceptance order (job
ids are ULIDs, strictly increasing within the server process, so sorting a
project's ids gives the order the server accepted them), none was lost and
none ran twice.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import httpx
import pytest

from deployster.models import JobStatus
from deployster.service import Deployster
from tests.helpers.deploys import deploy_body
from tests.helpers.server import LiveServer

PROJECTS = 10
PER_PROJECT = 100
CONNECTIONS = 64
DRAIN_TIMEOUT = 240.0  # a bound on the wait, not an assertion on speed

STAMPS = "race-stamps"


def stamp_command(stamps: Path, tag: str) -> str:
    return (f"echo \"start {tag} $(date +%s%N)\" >> '{stamps}'; "
            f"echo \"end {tag} $(date +%s%N)\" >> '{stamps}'")


def parse_stamps(path: Path) -> list[tuple[str, str, int]]:
    """(kind, tag, ns) per line, in file order; malformed lines are kept as errors."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        kind, tag, ns = line.split()
        rows.append((kind, tag, int(ns)))
    return rows


@pytest.mark.slow
async def test_thousand_concurrent_deploys_over_ten_projects(
    server: LiveServer, core: Deployster, tmp_path: Path
) -> None:
    dirs = []
    for p in range(PROJECTS):
        path = tmp_path / f"race-{p}"
        path.mkdir()
        await core.projects.add(str(path))
        dirs.append(path)

    # Interleaved: request n goes to project n % PROJECTS.
    requests = [(n % PROJECTS, f"p{n % PROJECTS}-r{n // PROJECTS}")
                for n in range(PROJECTS * PER_PROJECT)]
    commit = {tag: f"{n:07x}" for n, (_, tag) in enumerate(requests)}
    replies: dict[str, tuple[int, dict[str, object]]] = {}
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    sem = asyncio.Semaphore(CONNECTIONS)

    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60,
                                 limits=limits) as client:
        async def post(project: int, tag: str) -> None:
            body = deploy_body(dirs[project], stamp_command(dirs[project] / STAMPS, tag),
                               commit=commit[tag])
            async with sem:
                reply = await client.post("/deploy", json=body)
            replies[tag] = (reply.status_code, reply.json())

        await asyncio.gather(*(post(p, tag) for p, tag in requests))

    # Every request accepted with its own job.
    bad = {tag: r for tag, r in replies.items() if r[0] != 200 or "job_id" not in r[1]}
    assert not bad, f"{len(bad)} requests not accepted, e.g. {next(iter(bad.items()))}"
    job_of = {tag: str(r[1]["job_id"]) for tag, r in replies.items()}
    assert len(set(job_of.values())) == PROJECTS * PER_PROJECT

    # Wait (bounded) until every job has ended.
    pending = set(job_of.values())
    statuses: dict[str, JobStatus] = {}
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while pending and time.monotonic() < deadline:
        # Oldest first: once one is still unfinished, later ones of its project are too.
        for job_id in sorted(pending):
            job = await core.job(job_id)
            if job is None or job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                break
            statuses[job_id] = job.status
            pending.discard(job_id)
        if pending:
            await asyncio.sleep(0.5)
    assert not pending, f"{len(pending)} jobs still not finished after {DRAIN_TIMEOUT:g}s"
    not_complete = {j: s for j, s in statuses.items() if s is not JobStatus.COMPLETE}
    assert not not_complete, f"jobs not complete: {list(not_complete.items())[:5]}"

    for p, path in enumerate(dirs):
        rows = parse_stamps(path / STAMPS)
        tags = [tag for q, tag in requests if q == p]
        starts = [(tag, ns) for kind, tag, ns in rows if kind == "start"]
        ends = [(tag, ns) for kind, tag, ns in rows if kind == "end"]
        # Each job ran exactly once: one start and one end line per tag, no strays.
        assert sorted(t for t, _ in starts) == sorted(tags), f"project {p}: starts"
        assert sorted(t for t, _ in ends) == sorted(tags), f"project {p}: ends"
        start_ns, end_ns = dict(starts), dict(ends)
        # No overlap: ordered by start, each job starts after the previous ended.
        by_start = sorted(tags, key=start_ns.__getitem__)
        overlaps = [
            (a, b) for a, b in itertools.pairwise(by_start)
            if start_ns[b] < end_ns[a] or end_ns[a] < start_ns[a]
        ]
        assert not overlaps, f"project {p}: overlapping jobs {overlaps[:3]}"
        # Ran in acceptance order: start order == sorted job-id order.
        accepted = sorted(tags, key=job_of.__getitem__)
        assert by_start == accepted, f"project {p}: start order differs from acceptance order"
