"""A finished job's log leaves Redis ``DEPLOYSTER_LOG_GRACE`` seconds after it
reached SQL (a big log must not hold Redis's memory for the whole retention),
and every reader goes on from SQL at the switch: nothing lost, nothing twice.
A real server, a real job, the real expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, history_log
from tests.helpers.server import LiveServer, serving

GRACE = 1


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    yield from serving(settings, tmp_path, DEPLOYSTER_LOG_GRACE=str(GRACE))


async def stream_gone(core: Deployster, job_id: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while await core.redis.exists(core.keys.log(job_id)):
        assert time.monotonic() < deadline, "the log stream is still in Redis"
        await asyncio.sleep(0.1)


async def deployed_and_gone(server: LiveServer, core: Deployster, project_dir: Path,
                            command: str) -> tuple[str, str]:
    """A finished job of ``command`` whose stream has left Redis: (id, full log)."""
    await core.projects.add(str(project_dir))
    async with server.client() as client:
        reply = await client.post("/deploy", json=deploy_body(project_dir, command))
    job_id = str(reply.json()["job_id"])
    full = await history_log(core, job_id)
    await stream_gone(core, job_id)
    return job_id, full


async def test_readers_go_on_from_sql_once_the_log_left_redis(
    server: LiveServer, project_dir: Path, core: Deployster
) -> None:
    await core.projects.add(str(project_dir))
    # Output, a pause (the readers take their first part), more output.
    script = ("i=0; while [ $i -lt 500 ]; do echo \"first-$i\"; i=$((i+1)); done; "
              "sleep 1; i=0; while [ $i -lt 500 ]; do echo \"second-$i\"; i=$((i+1)); done")
    async with server.client() as client:
        reply = await client.post("/deploy", json=deploy_body(project_dir, script))
        job_id = reply.json()["job_id"]
        deadline = time.monotonic() + 20
        first_status = ""
        while "first-499" not in first_status:  # the seed client's poll, mid-job
            assert time.monotonic() < deadline, first_status
            first_status += (await client.get(f"/status/{job_id}")).json()["logs"]
        page = (await client.get(f"/jobs/{job_id}/logs", params={"from": 0})).json()
        assert page["finished"] is False and "first-0" in page["logs"]

        full = await history_log(core, job_id)
        await stream_gone(core, job_id)
        # The record stays for the retention: /status still has its cursor.
        assert await core.redis.ttl(core.keys.job(job_id)) > GRACE
        assert await core.redis.hget(core.keys.job(job_id), "log_in_sql") == "1"

        rest = (await client.get(f"/jobs/{job_id}/logs",
                                 params={"from": page["next"]})).json()
        assert rest["finished"] is True
        assert page["logs"] + rest["logs"] == full

        final = (await client.get(f"/status/{job_id}")).json()
        assert final["status"] == "complete"
        assert first_status + final["logs"] == full
        again = (await client.get(f"/status/{job_id}")).json()
        assert again["status"] == "complete" and again["logs"] == ""


async def test_a_job_read_only_after_the_switch_reads_it_all_from_sql(
    server: LiveServer, project_dir: Path, core: Deployster
) -> None:
    job_id, full = await deployed_and_gone(server, core, project_dir, "echo only-line")
    async with server.client() as client:
        status = (await client.get(f"/status/{job_id}")).json()
        assert status["status"] == "complete" and status["logs"] == full
        page = (await client.get(f"/jobs/{job_id}/logs")).json()
        assert page["logs"] == full and page["finished"] is True
        async with client.stream("GET", f"/jobs/{job_id}/stream") as stream:
            body = "".join([chunk async for chunk in stream.aiter_text()])
        assert "only-line" in body and "event: end" in body


async def test_the_history_keeps_the_log_when_the_job_is_written_again(
    server: LiveServer, project_dir: Path, core: Deployster
) -> None:
    # A finished job changed after its stream left (any later write marks it
    # dirty again): the writer must not replace the log in SQL with nothing.
    job_id, full = await deployed_and_gone(server, core, project_dir, "echo kept")
    await core.redis.hset(core.keys.dirty, job_id, "again")
    deadline = time.monotonic() + 15
    while await core.redis.hexists(core.keys.dirty, job_id):
        assert time.monotonic() < deadline, "the history writer did not write it again"
        await asyncio.sleep(0.1)
    assert await history_log(core, job_id) == full
    assert isinstance(full, str) and "kept" in full


async def test_a_cursor_kept_without_its_byte_offset_keeps_the_stream(core: Deployster) -> None:
    # A /status cursor written by an older server has no byte offset: without
    # the stream it could not go on, so the stream lives as long as the record.
    job_id = "01JD0000000000000000000001"
    k = core.keys
    await core.redis.hset(k.job(job_id), mapping={"status": "complete", "cursor": "6-1"})
    await core.redis.xadd(k.log(job_id), {"d": "hello\n"}, id="0-1")
    await core.redis.hset(k.dirty, job_id, "v1")
    assert await core.scripts.settle(job_id=job_id, version="v1", retention_s=100,
                                     log_grace_s=GRACE, finished="1") == 1
    assert await core.redis.ttl(k.log(job_id)) > GRACE
    assert await core.redis.hget(k.job(job_id), "log_in_sql") is None


async def test_a_record_gone_before_its_settle_stays_gone(core: Deployster) -> None:
    # The writer stored the job in SQL, then Redis let the record go (expired,
    # deleted) before the writer settled it: settling must not make it again as
    # a hash of log_in_sql alone, with no expiry, that no reader can parse.
    job_id = "01JD0000000000000000000003"
    k = core.keys
    await core.redis.hset(k.dirty, job_id, "v1")
    assert await core.scripts.settle(job_id=job_id, version="v1", retention_s=100,
                                     log_grace_s=GRACE, finished="1") == 1
    assert not await core.redis.exists(k.job(job_id), k.log(job_id))
    assert not await core.redis.hexists(k.dirty, job_id)
    assert await core.jobs.get(job_id) is None


async def test_the_sql_cursor_moves_once_per_read(core: Deployster) -> None:
    job_id = "01JD0000000000000000000002"
    await core.redis.hset(core.keys.job(job_id), mapping={"status": "complete",
                                                         "cursor_end": "10"})
    sql = core.scripts.status_sql
    assert await sql(job_id=job_id, nonce="a", from_end="5") == 0  # another read moved it
    assert await sql(job_id=job_id, nonce="a", from_end="10") == 1
    assert await core.redis.hget(core.keys.job(job_id), "cursor_end") == "end"
    assert await sql(job_id=job_id, nonce="a", from_end="10") == 1  # its retry: the same
    assert await sql(job_id=job_id, nonce="b", from_end="10") == 0  # those bytes were a's
