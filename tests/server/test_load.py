"""Many requests at once on a real server: none fails because of the
server's own Redis connection pool.

redis-py's default pool refuses a command once 100 connections are busy
(``MaxConnectionsError``), which the server answered as ``503
redis_unavailable``: half of a burst of 200 status polls. The pool now makes a
command wait for a free connection (``deployster/redis_conn.py``), sized by
``DEPLOYSTER_REDIS_CONNECTIONS``. Loopback only, every burst bounded; nothing
here is timed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deployster.models import Project
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body
from tests.helpers.server import LiveServer

# Requests in flight at once, each on its own connection.
CONCURRENCY = 500
# Status polls in each burst (and as many deploys beside them in the first).
BURST = 500
STREAMS = 150
# A bound on each wait, not a speed target.
TIMEOUT = 120.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Every deploy of a burst is accepted (no queue cap)."""
    return settings.with_overrides(max_queue=0)


async def held_job(server: LiveServer, project_dir: Path) -> tuple[str, Path]:
    """A running job that holds the project's lock until its gate file exists
    (at most ``TIMEOUT`` s), so the deploys after it are queued."""
    gate = project_dir / "gate"
    hold = (
        f"i=0; while [ ! -e '{gate}' ] && [ $i -lt {int(TIMEOUT * 20)} ]; do sleep 0.05; "
        "i=$((i+1)); done"
    )
    async with server.client() as client:
        reply = await client.post("/deploy", json=deploy_body(project_dir, hold, commit="held"))
    assert reply.status_code == 200 and "queued" not in reply.json(), reply.text
    return str(reply.json()["job_id"]), gate


@dataclass(frozen=True)
class Reply:
    method: str
    status: int
    body: str


def http_request(
    server: LiveServer, method: str, path: str, body: dict[str, object] | None = None
) -> tuple[str, bytes]:
    payload = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"x-deployster-token: {server.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return method, head.encode() + payload


async def burst(server: LiveServer, requests: list[tuple[str, bytes]]) -> list[Reply]:
    """Every request, over ``CONCURRENCY`` keep-alive connections opened
    first, so that the first ``CONCURRENCY`` requests reach the server
    together (httpx spends so much CPU per request that a burst of its
    requests trickles in). Plain HTTP/1.1: the server's replies to these
    carry a Content-Length."""
    pending = iter(requests)
    replies: list[Reply] = []

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for method, raw in pending:
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
                assert length is not None, head
                text = (await reader.readexactly(int(length.group(1)))).decode()
                replies.append(Reply(method, int(head.split(b" ", 2)[1]), text))
        finally:
            writer.close()

    host, port = server.url.removeprefix("http://").split(":")
    async with asyncio.timeout(TIMEOUT):
        connections = await asyncio.gather(
            *(asyncio.open_connection(host, int(port)) for _ in range(CONCURRENCY))
        )
        await asyncio.gather(*(worker(*pair) for pair in connections))
    assert len(replies) == len(requests)
    return replies


def failures(replies: list[Reply]) -> str:
    """'' when every reply is 2xx, else the count per status and a sample body of each."""
    bad = [r for r in replies if not 200 <= r.status < 300]
    if not bad:
        return ""
    counts = Counter(r.status for r in bad)
    samples = {r.status: r.body[:200] for r in bad}
    return f"{len(bad)} of {len(replies)} not 2xx: {dict(counts)}; e.g. {samples}"


async def test_500_polls_and_500_deploys_at_once_all_succeed(
    server: LiveServer, app_project: Project, project_dir: Path
) -> None:
    held, gate = await held_job(server, project_dir)
    async with server.client() as client:
        queued = await client.post(
            "/deploy", json=deploy_body(project_dir, "true", commit="queued")
        )
    assert queued.status_code == 200 and queued.json()["queued"], queued.text
    # Polls of the running job and of a queued one (which reads its position
    # too), interleaved with deploys, each with its own commit.
    polled = (held, queued.json()["job_id"])
    requests = []
    for n in range(BURST):
        requests.append(http_request(server, "GET", f"/status/{polled[n % 2]}"))
        body = deploy_body(project_dir, "true", commit=f"{n:07x}")
        requests.append(http_request(server, "POST", "/deploy", body))
    try:
        replies = await burst(server, requests)
    finally:
        gate.touch()

    assert failures(replies) == ""
    deploys = [json.loads(r.body) for r in replies if r.method == "POST"]
    assert len({d["job_id"] for d in deploys}) == BURST
    assert all(d["queued"] for d in deploys)


async def follow_stream(
    client: httpx.AsyncClient, job_id: str, settled: Callable[[], None]
) -> tuple[int, list[str]]:
    """(status, the events' names) of one ``/jobs/<id>/stream``, read until
    the server ends it; ``settled`` is called at its first event, or at once
    when it is refused."""
    names: list[str] = []
    async with client.stream("GET", f"/jobs/{job_id}/stream") as reply:
        if reply.status_code != 200:
            settled()
            await reply.aread()
            return reply.status_code, [reply.text]
        async for line in reply.aiter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
                if len(names) == 1:
                    settled()
    return 200, names


async def test_500_polls_beside_150_open_log_streams_all_succeed(
    server: LiveServer, app_project: Project, project_dir: Path
) -> None:
    held, gate = await held_job(server, project_dir)
    limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=STREAMS)
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers, limits=limits, timeout=TIMEOUT
    ) as streaming:
        # Each stream blocks on Redis for new output most of the time.
        count = 0
        all_settled = asyncio.Event()

        def settled() -> None:
            nonlocal count
            count += 1
            if count == STREAMS:
                all_settled.set()

        streams = [
            asyncio.create_task(follow_stream(streaming, held, settled)) for _ in range(STREAMS)
        ]
        try:
            async with asyncio.timeout(TIMEOUT):
                await all_settled.wait()
            replies = await burst(server, [http_request(server, "GET", f"/status/{held}")] * BURST)
        finally:
            gate.touch()
            async with asyncio.timeout(TIMEOUT):
                followed = await asyncio.gather(*streams)

    assert failures(replies) == ""
    # Every stream went on to the job's end, none cut short by an error event.
    assert Counter(status for status, _ in followed) == {200: STREAMS}
    endings = Counter(names[-1] for _, names in followed)
    assert endings == {"end": STREAMS}, endings
