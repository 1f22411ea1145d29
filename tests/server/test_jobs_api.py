"""Reading jobs over real HTTP (docs/api.md#endpoints): ``GET /jobs/<id>``, ``/jobs/<id>/logs``,
``/jobs/<id>/stream`` (SSE) and ``GET /projects``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, history_log, history_settled, wait_for_status
from tests.helpers.server import LiveServer, serving

UNKNOWN = "01JD0000000000000000000000"
SECRET = "s3cr3t-value-never-sent"


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """The live server, with a 1 s SSE keep-alive so that tests can see one."""
    yield from serving(settings, tmp_path, DEPLOYSTER_SSE_KEEPALIVE="1")


@pytest.fixture
async def registered(core: Deployster, project_dir: Path) -> Path:
    pipeline = [{"stage_name": "Production", "git_branch": "main",
                 "environment_variables": [{"key": "API_KEY", "value": SECRET}]}]
    await core.projects.add(str(project_dir), pipeline=pipeline)
    return project_dir


async def deploy(client: httpx.AsyncClient, cd: Path, *commands: str) -> str:
    reply = await client.post("/deploy", json=deploy_body(cd, *commands))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["job_id"])



async def forget_in_redis(core: Deployster, job_id: str) -> None:
    """Simulate retention: Redis let the job go, only the history has it. The
    expiry starts once the history writer has settled the job, a moment after
    its row and log are readable in SQL: wait for that, not for the row alone."""
    await history_log(core, job_id)
    await history_settled(core, job_id)
    await core.redis.delete(core.keys.job(job_id), core.keys.log(job_id))


async def wait_until(client: httpx.AsyncClient, job_id: str, status: str,
                     timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = (await client.get(f"/jobs/{job_id}")).json()
        if record["status"] == status:
            return dict(record)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not become {status}")


# ------------------------------------------------------------------ record


async def test_record_of_a_queued_then_running_then_finished_job(
    server: LiveServer, registered: Path
) -> None:
    async with server.client() as client:
        first = await deploy(client, registered, "sleep 1.5")
        second = await deploy(client, registered, "echo two")
        running = await wait_until(client, first, "running")
        assert running["job_id"] == first and "position" not in running
        queued = (await client.get(f"/jobs/{second}")).json()
        assert queued["status"] == "queued" and queued["position"] == 1
        assert queued["commands"][-1] == "supervisorctl restart my-app--main"
        assert queued["log_bytes"] == 0
        await wait_for_status(client, second)
        done = (await client.get(f"/jobs/{second}")).json()
    assert done["status"] == "complete" and done["exit_code"] == 0
    assert "position" not in done and done["finished_at"]
    assert done["log_bytes"] > 0
    for key in ("job_id", "project_id", "project", "cd", "commit_hash", "ref_name", "stage",
                "reason", "queued_at", "started_at", "started_by", "superseded_by"):
        assert key in done, key


async def test_record_from_the_history_once_redis_let_it_go(
    server: LiveServer, registered: Path, core: Deployster
) -> None:
    async with server.client() as client:
        job_id = await deploy(client, registered, "echo old")
        await wait_for_status(client, job_id)
        live = (await client.get(f"/jobs/{job_id}")).json()
        await forget_in_redis(core, job_id)
        assert await core.jobs.get(job_id) is None
        old = (await client.get(f"/jobs/{job_id}")).json()
    assert old["status"] == "complete"
    assert {k: v for k, v in old.items() if k != "log_bytes"} == {
        k: v for k, v in live.items() if k != "log_bytes"}
    assert old["log_bytes"] == live["log_bytes"]


async def test_unknown_jobs_are_404_with_one_body(server: LiveServer, core: Deployster) -> None:
    # A hash that is no whole record (a field written after Redis let the
    # record go: HSET makes a hash of that field alone) is no job either.
    partial = UNKNOWN[:-1] + "1"
    await core.redis.hset(core.keys.job(partial), "log_in_sql", "1")
    async with server.client() as client:
        for job_id in (UNKNOWN, "nope", partial):
            for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/logs", f"/jobs/{job_id}/stream"):
                reply = await client.get(path)
                assert reply.status_code == 404, path
                assert reply.json() == {"error": f"no job {job_id}", "code": "not_found"}
        # The seed's /status: as for an unknown job.
        unknown = await client.get(f"/status/{UNKNOWN}")
        reply = await client.get(f"/status/{partial}")
        assert (reply.status_code, reply.json()) == (unknown.status_code, unknown.json())


async def test_the_new_endpoints_need_the_token(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        for path in (f"/jobs/{UNKNOWN}", f"/jobs/{UNKNOWN}/logs", f"/jobs/{UNKNOWN}/stream",
                     "/projects"):
            reply = await client.get(path, headers={"x-deployster-token": "wrong"})
            assert reply.status_code == 403, path
            assert reply.json()["error"] == "Unauthorized"


# -------------------------------------------------------------------- logs


async def test_paging_a_running_jobs_log_loses_and_repeats_nothing(
    server: LiveServer, registered: Path, core: Deployster
) -> None:
    script = "for i in $(seq 1 300); do echo línea-$i; sleep 0.003; done"
    async with server.client() as client:
        job_id = await deploy(client, registered, script)
        cursor, pages = 0, []
        while True:
            reply = await client.get(f"/jobs/{job_id}/logs", params={"from": cursor})
            assert reply.status_code == 200
            page = reply.json()
            assert page["from"] == cursor and page["job_id"] == job_id
            assert page["next"] == cursor + len(page["logs"].encode())
            pages.append(page["logs"])
            cursor = page["next"]
            if page["finished"]:
                break
            await asyncio.sleep(0.02)
        # Non-destructive: the seed's /status still gets everything.
        final = await wait_for_status(client, job_id)
    assert page["status"] == "complete" and page["reason"] is None
    assert len([p for p in pages if p]) > 1, "expected the log over several pages"
    text = "".join(pages)
    assert text == final["logs"]
    assert text == await history_log(core, job_id)
    lines = [line for line in text.splitlines() if line.startswith("línea-")]
    assert lines == [f"línea-{i}" for i in range(1, 301)]


async def test_big_logs_come_in_bounded_pages_from_redis_and_from_history(
    server: LiveServer, registered: Path, core: Deployster
) -> None:
    script = "i=0; while [ $i -lt 3 ]; do head -c 1000000 /dev/zero | tr '\\0' é; i=$((i+1)); done"
    async with server.client() as client:
        job_id = await deploy(client, registered, script)
        await wait_for_status(client, job_id)
        full = await history_log(core, job_id)

        async def read_all() -> list[dict[str, Any]]:
            cursor, pages = 0, []
            while True:
                page = (await client.get(f"/jobs/{job_id}/logs",
                                         params={"from": cursor})).json()
                pages.append(page)
                cursor = page["next"]
                if page["finished"]:
                    return pages

        live = await read_all()
        await forget_in_redis(core, job_id)
        old = await read_all()
    for pages in (live, old):
        assert "".join(p["logs"] for p in pages) == full
        assert len(pages) >= 3
        assert all(len(p["logs"].encode()) <= 1024 * 1024 for p in pages)
        assert pages[-1]["next"] == len(full.encode())


async def test_a_cursor_in_the_middle_and_past_the_end(
    server: LiveServer, registered: Path, core: Deployster
) -> None:
    async with server.client() as client:
        job_id = await deploy(client, registered, "echo 'día uno'; echo dos")
        await wait_for_status(client, job_id)
        data = (await history_log(core, job_id)).encode()
        middle = data.index(b"dos")
        for _ in range(2):  # from Redis, then from the history alone
            page = (await client.get(f"/jobs/{job_id}/logs",
                                     params={"from": middle})).json()
            assert page["logs"].encode() == data[middle:]
            assert page["next"] == len(data) and page["finished"] is True
            beyond = (await client.get(f"/jobs/{job_id}/logs",
                                       params={"from": len(data) + 100})).json()
            assert beyond["logs"] == "" and beyond["next"] == len(data) + 100
            await forget_in_redis(core, job_id)


async def test_a_bad_cursor_is_400(server: LiveServer, registered: Path) -> None:
    async with server.client() as client:
        job_id = await deploy(client, registered, "echo x")
        for cursor in ("-1", "abc", "1.5", "٣", "1e3", "9" * 5000):
            reply = await client.get(f"/jobs/{job_id}/logs", params={"from": cursor})
            assert reply.status_code == 400, cursor
            assert reply.json()["code"] == "invalid_cursor" and reply.json()["error"]
            stream = await client.get(f"/jobs/{job_id}/stream",
                                      headers={"Last-Event-ID": cursor.encode()})
            assert stream.status_code == 400, cursor
            assert stream.json()["code"] == "invalid_cursor"


# --------------------------------------------------------------------- SSE


@dataclass
class Event:
    event: str
    data: str
    id: str | None

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.data))


async def read_events(
    client: httpx.AsyncClient, job_id: str, *, headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None, comments: list[str] | None = None,
    timeout: float = 30,
) -> list[Event]:
    """Every event of the stream, until the server ends it (after ``end``)."""
    events: list[Event] = []
    fields: dict[str, list[str]] = {}
    async with asyncio.timeout(timeout), client.stream(
        "GET", f"/jobs/{job_id}/stream", headers=headers, params=params
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["cache-control"] == "no-cache"
        async for line in reply.aiter_lines():
            if line == "":
                if fields:
                    events.append(Event(fields["event"][0], "\n".join(fields.get("data", [])),
                                        (fields.get("id") or [None])[0]))
                fields = {}
            elif line.startswith(":"):
                if comments is not None:
                    comments.append(line)
            else:
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value.removeprefix(" "))
    return events


def log_text(events: list[Event]) -> str:
    return "".join(e.json["text"] for e in events if e.event == "log")


async def test_stream_carries_the_whole_log_then_the_end(
    server: LiveServer, registered: Path, core: Deployster
) -> None:
    # Output that ends mid-line, blank lines, a JSON-looking line and a non-ASCII one.
    script = ("printf 'partial'; sleep 0.3; printf ' rest\\n\\n\\n{\"a\": 1}\\n'; "
              "for i in $(seq 1 50); do echo ünïcode-$i; sleep 0.01; done; printf 'no newline'")
    async with server.client() as client:
        job_id = await deploy(client, registered, script)
        comments: list[str] = []
        events = await read_events(client, job_id, comments=comments)
    full = await history_log(core, job_id)
    assert log_text(events) == full
    logs = [e for e in events if e.event == "log"]
    ids = [int(e.id or -1) for e in logs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[-1] == len(full.encode())
    # Each id is the cursor after its own chunk.
    position = 0
    for e in logs:
        position += len(e.json["text"].encode())
        assert int(e.id or -1) == position
    assert events[0].event == "status" and events[0].json["status"] in ("queued", "running")
    assert events[-1].event == "end"
    assert events[-1].json == {"job_id": job_id, "status": "complete", "reason": None,
                               "exit_code": 0}


async def test_last_event_id_resumes_exactly(
    server: LiveServer, registered: Path, core: Deployster
) -> None:
    script = "for i in $(seq 1 40); do echo step-$i; sleep 0.02; done"
    async with server.client() as client:
        job_id = await deploy(client, registered, script)
        events = await read_events(client, job_id)
        full = (await history_log(core, job_id)).encode()
        logs = [e for e in events if e.event == "log"]
        assert len(logs) > 2
        middle = logs[len(logs) // 2].id
        assert middle is not None
        resumed = await read_events(client, job_id, headers={"Last-Event-ID": middle})
        by_query = await read_events(client, job_id, params={"from": middle})
        # The header wins over ?from=.
        both = await read_events(client, job_id, headers={"Last-Event-ID": middle},
                                 params={"from": 0})
        await forget_in_redis(core, job_id)
        from_history = await read_events(client, job_id, headers={"Last-Event-ID": middle})
        whole_history = await read_events(client, job_id)
    for replay in (resumed, by_query, both, from_history):
        assert log_text(replay).encode() == full[int(middle):]
        assert replay[-1].event == "end" and replay[-1].json["status"] == "complete"
    assert log_text(whole_history).encode() == full


async def test_stream_reports_queued_then_running_and_keeps_alive(
    server: LiveServer, registered: Path
) -> None:
    async with server.client() as client:
        first = await deploy(client, registered, "sleep 2.5")
        # Runs long enough to be seen running: a job that starts and ends
        # between two reads of the stream is reported ended, never running.
        second = await deploy(client, registered, "sleep 0.5; echo second")
        comments: list[str] = []
        events = await read_events(client, second, comments=comments)
        await wait_for_status(client, first)
    statuses = [e.json for e in events if e.event == "status"]
    assert statuses[0] == {"status": "queued", "position": 1}
    assert statuses[-1] == {"status": "running"}
    assert ": keep-alive" in comments  # 1 s in this server, 2.5 s of silence
    assert "second\n" in log_text(events)
    assert events[-1].event == "end" and events[-1].json["status"] == "complete"


async def test_a_client_leaving_mid_stream_leaves_no_trace(
    server: LiveServer, registered: Path
) -> None:
    async with server.client() as client:
        job_id = await deploy(client, registered, "echo start; sleep 2; echo end")
        async with client.stream("GET", f"/jobs/{job_id}/stream") as reply:
            async for line in reply.aiter_lines():
                if "start" in line:
                    break  # leave while the job still runs
        final = await wait_for_status(client, job_id)
        assert final["status"] == "complete"
        assert (await client.get("/healthz")).status_code == 200
    assert server.stop() == 0
    assert "Traceback" not in server.log()
    assert "Error" not in server.log()


async def test_a_failed_job_ends_the_stream_with_its_reason(
    server: LiveServer, registered: Path
) -> None:
    async with server.client() as client:
        job_id = await deploy(client, registered, "echo a; exit 3")
        events = await read_events(client, job_id)
    assert events[-1].json == {"job_id": job_id, "status": "failed",
                               "reason": "command_failed", "exit_code": 3}
    assert "exited with code 3" in log_text(events)


# ---------------------------------------------------------------- projects


async def test_projects_list_shape_without_variable_values(
    server: LiveServer, registered: Path, core: Deployster
) -> None:
    async with server.client() as client:
        job_id = await deploy(client, registered, "sleep 1")
        await wait_until(client, job_id, "running")
        reply = await client.get("/projects")
        await wait_for_status(client, job_id)
    assert reply.status_code == 200
    assert SECRET not in reply.text
    (project,) = reply.json()["projects"]
    registered_project = await core.projects.get(project["id"])
    assert registered_project is not None
    assert project == {
        "id": registered_project.id,
        "name": registered_project.name,
        "node": registered_project.node,
        "path": str(registered.resolve()),
        "lock_ttl": registered_project.lock_ttl,
        "timeout": registered_project.timeout,
        "queue_policy": "fifo",
        **registered_project.steps.to_dict(),
        "stages": [{"stage_name": "Production", "git_branch": "main", "variables": ["API_KEY"]}],
        "queue_length": 0,
        "running_job": job_id,
        "deployed_commit": None,  # the job runs: nothing complete yet
        "deployed_job": None,
        "notify": None,  # the server-wide targets (none here)
        "github": None,
        "github_token_set": False,
    }


async def test_live_streams_are_capped_with_429_and_retry_after(
    settings: Settings, tmp_path: Path, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    gate = tmp_path / "gate"
    for live in serving(settings, tmp_path, DEPLOYSTER_MAX_STREAMS="1"):
        async with live.client() as client:
            job = await deploy(client, project_dir,
                               f"echo up; while [ ! -e {gate} ]; do sleep 0.05; done")
            async with client.stream("GET", f"/jobs/{job}/stream") as first:
                assert first.status_code == 200
                # Read up to the first event, keeping the iterator referenced:
                # a dropped one is finalised, which closes the connection.
                lines = first.aiter_lines()
                while not (await anext(lines)).startswith("event:"):
                    pass
                async with asyncio.timeout(10):  # a 200 here would never end
                    second = await client.get(f"/jobs/{job}/stream")
                assert second.status_code == 429
                assert second.json()["code"] == "too_many_streams"
                assert int(second.headers["retry-after"]) > 0
            # The first one closed: its slot is free again (once the server
            # noticed the disconnect).
            gate.touch()
            deadline = time.monotonic() + 10
            while True:
                async with client.stream("GET", f"/jobs/{job}/stream") as again:
                    if again.status_code == 200:
                        async with asyncio.timeout(20):
                            text = (await again.aread()).decode()
                        break
                assert time.monotonic() < deadline, "a closed stream's slot was never freed"
                await asyncio.sleep(0.1)
            assert "event: end" in text and '"status": "complete"' in text
