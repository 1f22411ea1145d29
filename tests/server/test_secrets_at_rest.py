"""Secrets at rest, over real HTTP against `deployster serve`: a command holding
a stage value, the admin token or a project token runs with the value as sent,
while everything the server keeps (the Redis job record and every other key,
the SQL history, the data directory, the log) and everything it shows
(``GET /jobs/<id>``, ``deployster job show``) holds it masked. The text as sent
lives in one Redis field while the job is queued or running and goes with the
job's end, whichever end it is; such a job cannot be redeployed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployster import control, store, tokens
from deployster.errors import Conflict
from deployster.logstream import read_full_log
from deployster.masking import MASK
from deployster.service import Deployster
from tests.helpers.deploys import (
    deploy_body,
    history_log,
    history_row,
    wait_for_file,
    wait_for_status,
)
from tests.helpers.locks import hold_lock
from tests.helpers.paths import REPO
from tests.helpers.server import TOKEN, LiveServer

STAGE_VALUE = "Qv7zKp-stage-secret-2718"
PIPELINE = [{"stage_name": "Production", "git_branch": "main", "environment_variables": [
    {"key": "API_KEY", "value": STAGE_VALUE}]}]
# A job that holds the lock for ever: deploys behind it stay queued.
STALE_OWNER = "01JDZZZZZZZZZZZZZZZZZZZZF3"
RAW_FIELD = "commands_raw"


async def registered(core: Deployster, project_dir: Path, **options: Any) -> dict[str, str]:
    """Register the project with a stage value and a project token; the
    secrets a command may hold, by name."""
    project = await core.projects.add(str(project_dir), pipeline=PIPELINE, **options)
    project_token = await tokens.rotate(core.projects, project)
    return {"stage value": STAGE_VALUE, "admin token": TOKEN, "project token": project_token}


def writing_commands(secrets: dict[str, str]) -> list[str]:
    """One command per secret, writing the value as sent to a file in the project."""
    return [f"printf %s '{value}' > '{name}.txt'" for name, value in secrets.items()]


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


async def redis_dump(core: Deployster) -> dict[str, Any]:
    """Every key of this instance (its namespace) with what it holds."""
    out: dict[str, Any] = {}
    async for key in core.redis.scan_iter(f"{core.settings.namespace}:*", count=1000):
        kind = await core.redis.type(key)
        if kind == "string":
            out[key] = await core.redis.get(key)
        elif kind == "hash":
            out[key] = await core.redis.hgetall(key)
        elif kind == "list":
            out[key] = await core.redis.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = sorted(await core.redis.smembers(key))
        elif kind == "zset":
            out[key] = await core.redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[key] = await core.redis.xrange(key)
    return out


async def assert_redis_holds_none(core: Deployster, secrets: dict[str, str], *,
                                  except_raw_of: str | None = None) -> None:
    """No key holds a secret, but for the raw-commands field of ``except_raw_of``
    (a job still queued or running), which must hold every one."""
    job_key = core.keys.job(except_raw_of) if except_raw_of else None
    for key, value in (await redis_dump(core)).items():
        if key == job_key:
            value = dict(value)
            raw = value.pop(RAW_FIELD, "")
            assert leaks(raw, secrets) == list(secrets), (key, raw)
        assert not leaks(key, secrets), key
        assert not leaks(json.dumps(value), secrets), (key, value)


async def sql_dump(core: Deployster) -> dict[str, str]:
    """Every row of every deployster table, as text, by table."""
    out = {}
    for table in ("deployments", "audit_events", "projects", "schema_migrations"):
        rows = await core.db.fetch_all(f"SELECT * FROM {table}")
        out[table] = json.dumps([dict(r._mapping) for r in rows], default=str)
    return out


def job_show(server: LiveServer, job_id: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "deployster", "job", "show", job_id],
        env=server.env, cwd=REPO, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def post(client: httpx.AsyncClient, body: dict[str, object]) -> str:
    reply = await client.post("/deploy", json=body)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["job_id"])


async def test_a_secret_in_a_command_runs_as_sent_and_is_kept_nowhere(
    server: LiveServer, core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    secrets = await registered(core, project_dir)
    gate = tmp_path / "gate"
    commands = [*writing_commands(secrets),
                f"while [ ! -e '{gate}' ]; do sleep 0.05; done", "echo plain-output"]
    async with server.client() as client:
        job_id = await post(client, deploy_body(project_dir, *commands))
        await wait_for_file(project_dir / "project token.txt")

        # Running: the text as sent is in its one field, nowhere else.
        await assert_redis_holds_none(core, secrets, except_raw_of=job_id)
        record = (await client.get(f"/jobs/{job_id}")).json()
        assert not leaks(json.dumps(record), secrets), record
        assert record["commands_masked"] is True
        assert record["commands"][0] == f"printf %s '{MASK}' > 'stage value.txt'"
        assert record["commands"][4] == "echo plain-output"

        gate.touch()
        final = await wait_for_status(client, job_id)
        assert final["status"] == "complete", final["logs"]
        # The commands ran with the values as sent.
        for name, value in secrets.items():
            assert (project_dir / f"{name}.txt").read_text() == value
        assert not leaks(str(final["logs"]), secrets)
        assert f"$ printf %s '{MASK}' > 'admin token.txt'" in str(final["logs"])

        # Ended: gone from Redis, in the same step as the end.
        job_hash = await core.redis.hgetall(core.keys.job(job_id))
        assert job_hash["status"] == "complete"
        assert RAW_FIELD not in job_hash and "signature" not in job_hash
        await assert_redis_holds_none(core, secrets)

        row = await history_row(core, job_id, "complete")
        assert row.commands_masked and row.commands == record["commands"]
        await history_log(core, job_id)
        stored = await core.db.fetch_one(
            "SELECT commands, commands_masked, log FROM deployments WHERE id = :id",
            {"id": job_id})
        assert stored is not None and stored["commands_masked"] == 1
        assert MASK in stored["commands"] and "plain-output" in stored["log"]
        for table, text in (await sql_dump(core)).items():
            # The stage value is the project's configuration (its pipeline):
            # stored as set, by design; no token is stored anywhere.
            allowed = {"stage value"} if table == "projects" else set()
            assert set(leaks(text, secrets)) <= allowed, (table, text)

        record = (await client.get(f"/jobs/{job_id}")).json()
        assert not leaks(json.dumps(record), secrets) and record["commands_masked"] is True
    log = await read_full_log(core.redis, core.keys, job_id)
    assert not leaks(log, secrets) and "plain-output" in log

    shown = job_show(server, job_id)
    assert not leaks(shown, secrets), shown
    assert f"[3] printf %s '{MASK}' > 'project token.txt'" in shown
    assert "cannot be redeployed" in shown
    assert not leaks(server.log(), secrets)
    # Nothing in the data directory (SQLite, its WAL) holds a token; the stage
    # value is in the projects table, as configured.
    for path in core.settings.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for name in ("admin token", "project token"):
                assert secrets[name].encode() not in data, (name, path)


async def _cancel(client: httpx.AsyncClient, job_id: str) -> None:
    reply = await client.post(f"/jobs/{job_id}/cancel")
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("end", ["cancelled while queued", "superseded"])
async def test_a_job_ended_before_it_ran_keeps_no_secret(
    server: LiveServer, core: Deployster, project_dir: Path, end: str
) -> None:
    secrets = await registered(core, project_dir, queue_policy="supersede")
    project = await core.projects.find(str(project_dir))
    await hold_lock(core, project.id, STALE_OWNER, 300_000)
    async with server.client() as client:
        first = await post(client, deploy_body(project_dir, *writing_commands(secrets),
                                               commit="c1"))
        assert (await client.get(f"/jobs/{first}")).json()["status"] == "queued"
        await assert_redis_holds_none(core, secrets, except_raw_of=first)
        if end == "superseded":
            second = await post(client, deploy_body(project_dir, "echo later", commit="c2"))
            assert (await client.get(f"/jobs/{first}")).json()["reason"] == "superseded"
            await _cancel(client, second)
        else:
            await _cancel(client, first)
        job_hash = await core.redis.hgetall(core.keys.job(first))
        assert job_hash["status"] == "failed" and RAW_FIELD not in job_hash
        await assert_redis_holds_none(core, secrets)
    row = await history_row(core, first, "failed")
    assert row.commands_masked and not leaks(json.dumps(row.commands), secrets)
    assert not any((project_dir / f"{name}.txt").exists() for name in secrets)


async def test_a_job_whose_commands_held_a_secret_is_not_redeployed(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    secrets = await registered(core, project_dir)
    async with server.client() as client:
        job_id = await post(client, deploy_body(project_dir, *writing_commands(secrets)))
        assert (await wait_for_status(client, job_id))["status"] == "complete"
    await history_row(core, job_id, "complete")

    # From the live record, then from the history once Redis let it go.
    for where in ("redis", "history"):
        if where == "history":
            await core.redis.delete(core.keys.job(job_id))
        with pytest.raises(Conflict) as refused:
            await control.redeploy(core, job_id, actor="tester")
        message = refused.value.message
        assert "cannot be redeployed" in message and "stage variable" in message, message
        assert refused.value.code == "secret_in_commands"
        assert "\n" not in message and not leaks(message, secrets)
    # Nothing was queued, nothing audited.
    project = await core.projects.find(str(project_dir))
    assert await core.queue.length(project.id) == 0
    assert [j.id for j in await store.select_deployments(core.db)] == [job_id]
    assert not [e for e in await store.select_audit_events(core.db)
                if e["action"] == "job.redeploy"]


async def test_a_job_without_secrets_is_still_redeployed(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await registered(core, project_dir)
    async with server.client() as client:
        job_id = await post(client, deploy_body(project_dir, "echo plain >> runs.txt"))
        assert (await wait_for_status(client, job_id))["status"] == "complete"
        record = (await client.get(f"/jobs/{job_id}")).json()
        assert record["commands_masked"] is False
        result, _ = await control.redeploy(core, job_id, actor="tester")
        new_id = result.job_id
        assert new_id != job_id
        assert (await wait_for_status(client, new_id))["status"] == "complete"
    assert (project_dir / "runs.txt").read_text() == "plain\nplain\n"
    new = await core.job(new_id)
    assert new is not None and new.commands[0] == "echo plain >> runs.txt"


async def test_a_command_line_named_in_the_log_is_masked_before_it_is_shortened(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    """A cancel names the job's processes by command line, shortened to 120
    characters: cut there, a secret's first characters reached the log."""
    await core.projects.add(str(project_dir), pipeline=PIPELINE)
    # '/bin/sh -c ' + this: the value starts at character 112.
    command = "sleep 30; true # " + "x" * 84 + STAGE_VALUE
    async with server.client() as client:
        job_id = await post(client, deploy_body(project_dir, command))
        deadline = time.monotonic() + 20
        while "sleep 30" not in await read_full_log(core.redis, core.keys, job_id):
            assert time.monotonic() < deadline, "the command never started"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the shell has started its sleep
        await _cancel(client, job_id)
        final = await wait_for_status(client, job_id)
    log = str(final["logs"])
    assert final["reason"] == "cancelled", log
    assert RAW_FIELD not in await core.redis.hgetall(core.keys.job(job_id))
    assert "sending SIGTERM to pid" in log and f"{'x' * 20}{MASK}" in log, log
    assert STAGE_VALUE[:6] not in log, log

