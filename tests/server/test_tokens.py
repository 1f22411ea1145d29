"""Per-project tokens (docs/api.md#what-a-project-token-may-see) and request
limits over real HTTP against ``deployster serve``: real Redis, real database, no
mocks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from deployster import store, tokens
from deployster.access import ADMIN, TOKEN_PATTERN, Principal
from deployster.models import Project
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, history_row, wait_for_status
from tests.helpers.server import LiveServer, start_server

UNAUTHORIZED = {"error": "Unauthorized", "code": "unauthorized",
                "hint": "send the admin token or the project's token in the "
                        "x-deployster-token header"}
UNKNOWN_ID = "01JD0000000000000000000000"


@pytest.fixture
async def app_token(core: Deployster, app_project: Project) -> str:
    return await tokens.rotate(core.projects, app_project)


def as_token(server: LiveServer, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url, headers={"x-deployster-token": token}, timeout=30
    )



async def nothing_stored(core: Deployster) -> None:
    assert await core.redis.keys(f"{core.keys.prefix}job:*") == []
    assert await core.redis.keys(f"{core.keys.prefix}queue:*") == []
    assert await store.select_deployments(core.db) == []


# ------------------------------------------------------------------ tokens


async def test_token_format_and_only_its_hash_is_stored(
    core: Deployster, app_project: Project, app_token: str
) -> None:
    assert TOKEN_PATTERN.fullmatch(app_token)
    assert tokens.generate() != app_token
    rows = await core.db.fetch_all("SELECT * FROM projects")
    dumped = repr([dict(r._mapping) for r in rows])
    assert app_token not in dumped
    assert app_token[len("dps_"):] not in dumped
    row = await core.db.fetch_one("SELECT * FROM projects WHERE id = :id", {"id": app_project.id})
    assert row is not None
    assert row["token_hash"] == hashlib.sha256(app_token.encode()).hexdigest()
    assert row["token_created_at"]
    project = await core.projects.find(app_project.name)
    assert "token_hash" not in project.to_dict() and project.to_dict()["token_set"] is True
    assert row["token_hash"] not in repr(project)


async def test_project_token_deploys_to_its_project_and_history_says_which_token(
    server: LiveServer, core: Deployster, app_project: Project, app_token: str
) -> None:
    async with as_token(server, app_token) as client:
        reply = await client.post("/deploy", json=deploy_body(app_project.path, "echo by-token"))
        assert reply.status_code == 200, reply.text
        job_id = reply.json()["job_id"]
        final = await wait_for_status(client, job_id)
    assert final["status"] == "complete"
    assert "by-token\n" in str(final["logs"])
    assert (await history_row(core, job_id)).started_by == "token:my-app"

    async with server.client() as admin:
        reply = await admin.post("/deploy", json=deploy_body(app_project.path, "echo by-admin"))
        admin_job = reply.json()["job_id"]
        assert (await wait_for_status(admin, admin_job))["status"] == "complete"
    assert (await history_row(core, admin_job)).started_by == "admin"


async def test_project_token_cannot_deploy_elsewhere(
    server: LiveServer, core: Deployster, app_project: Project, other: Project, app_token: str,
    tmp_path: Path,
) -> None:
    missing = tmp_path / "does-not-exist"
    unregistered = tmp_path / "unregistered"
    unregistered.mkdir()
    async with as_token(server, app_token) as client:
        for cd in (other.path, str(missing), str(unregistered), f"{other.path}/",
                   f"{app_project.path}/../other-app"):
            reply = await client.post("/deploy", json=deploy_body(cd, "echo nope"))
            assert reply.status_code == 403, (cd, reply.text)
            body = reply.json()
            assert body["code"] == "token_scope" and "my-app" in body["error"]
            assert set(body) == {"error", "code"}
        # Its own directory, spelled differently, is its project.
        reply = await client.post("/deploy", json=deploy_body(f"{app_project.path}/", "echo ok"))
        assert reply.status_code == 200
        assert (await wait_for_status(client, reply.json()["job_id"]))["status"] == "complete"
    rows = await store.select_deployments(core.db)
    assert all(r.project_id == app_project.id for r in rows)
    assert await core.queue.length(other.id) == 0


async def test_project_token_cannot_self_register_under_allowed_roots(
    settings: Settings, core: Deployster, app_project: Project, app_token: str, tmp_path: Path
) -> None:
    root = tmp_path / "www"
    (root / "new-site").mkdir(parents=True)
    live = start_server(settings.with_overrides(allowed_roots=(root,)),
                        tmp_path / "roots.log")
    try:
        async with as_token(live, app_token) as client:
            reply = await client.post("/deploy", json=deploy_body(root / "new-site", "echo x"))
        assert reply.status_code == 403 and reply.json()["code"] == "token_scope"
        assert [p.name for p in await core.projects.all()] == ["my-app"]
        await nothing_stored(core)
        # The admin token would have registered it: the refusal is the token's scope.
        async with live.client() as admin:
            reply = await admin.post("/deploy", json=deploy_body(root / "new-site", "echo x"))
            assert reply.status_code == 200
            await wait_for_status(admin, reply.json()["job_id"])
        assert "new-site" in [p.name for p in await core.projects.all()]
    finally:
        live.stop()


async def test_status_of_another_projects_job_is_404_and_leaves_its_cursor(
    server: LiveServer, core: Deployster, app_project: Project, other: Project, app_token: str
) -> None:
    script = "for i in $(seq 1 50); do echo line-$i; done"
    async with server.client() as admin:
        job_id = (await admin.post("/deploy", json=deploy_body(other.path, script))).json()[
            "job_id"]
        await history_row(core, job_id)  # finished, no /status read so far
        async with as_token(server, app_token) as client:
            for _ in range(3):
                reply = await client.get(f"/status/{job_id}")
                assert reply.status_code == 404
                assert reply.json() == {"status": "not_found"}
            unknown = await client.get(f"/status/{UNKNOWN_ID}")
            assert (unknown.status_code, unknown.json()) == (404, {"status": "not_found"})
        final = await wait_for_status(admin, job_id)
    assert final["status"] == "complete"
    lines = [x for x in str(final["logs"]).splitlines() if x.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 51)]


async def test_status_from_history_is_404_for_another_projects_token(
    server: LiveServer, core: Deployster, other: Project, app_token: str
) -> None:
    async with server.client() as admin:
        job_id = (await admin.post("/deploy", json=deploy_body(other.path, "echo old"))).json()[
            "job_id"]
        await history_row(core, job_id)
        # Redis let the job go: /status answers from the SQL history.
        await core.redis.delete(core.keys.job(job_id), core.keys.log(job_id))
        async with as_token(server, app_token) as client:
            reply = await client.get(f"/status/{job_id}")
        assert (reply.status_code, reply.json()) == (404, {"status": "not_found"})
        reply = await admin.get(f"/status/{job_id}")
        assert reply.json()["status"] == "complete" and "old\n" in reply.json()["logs"]


async def test_cancel_of_another_projects_job_is_404_and_audit_names_the_token(
    server: LiveServer, core: Deployster, app_project: Project, other: Project, app_token: str
) -> None:
    async with server.client() as admin:
        running = (await admin.post("/deploy", json=deploy_body(other.path, "sleep 30"))).json()
        queued = (await admin.post("/deploy", json=deploy_body(other.path, "echo q"))).json()
        assert queued.get("queued") is True
        async with as_token(server, app_token) as client:
            unknown = await client.post(f"/jobs/{UNKNOWN_ID}/cancel")
            for job_id in (running["job_id"], queued["job_id"]):
                reply = await client.post(f"/jobs/{job_id}/cancel")
                assert reply.status_code == 404
                assert reply.json() == {"error": f"no job {job_id!r}", "code": "not_found"}
            assert unknown.json() == {"error": f"no job {UNKNOWN_ID!r}", "code": "not_found"}
            status = (await admin.get(f"/status/{queued['job_id']}")).json()
            assert status["status"] == "queued"

            # Its own project's jobs it may cancel; the audit says which token did.
            own = (await client.post(
                "/deploy", json=deploy_body(app_project.path, "sleep 30"))).json()
            reply = await client.post(f"/jobs/{own['job_id']}/cancel")
            assert reply.status_code == 200, reply.text
            assert reply.json()["reason"] == "cancelled"
        # The queued one first: cancelling the running one starts it, and
        # "echo q" may be over before its cancel arrives (409; seen under load).
        for job_id in (queued["job_id"], running["job_id"]):
            assert (await admin.post(f"/jobs/{job_id}/cancel")).status_code == 200
    events = await store.select_audit_events(core.db)
    actors = {e["job_id"]: e["actor"] for e in events if e["action"] == "job.cancel"}
    assert actors == {own["job_id"]: "api:token:my-app", running["job_id"]: "api:admin",
                      queued["job_id"]: "api:admin"}


async def test_rotation_stops_the_old_token_at_once_in_a_running_server(
    server: LiveServer, core: Deployster, app_project: Project, app_token: str
) -> None:
    current = app_token
    for _ in range(5):
        async with as_token(server, current) as client:
            assert (await client.get(f"/status/{UNKNOWN_ID}")).status_code == 404
        project = await core.projects.find(app_project.name)
        new = await tokens.rotate(core.projects, project)
        # No wait: the very next request with the old token is refused.
        async with as_token(server, current) as client:
            reply = await client.post("/deploy", json=deploy_body(app_project.path, "echo old"))
            assert (reply.status_code, reply.json()) == (403, UNAUTHORIZED)
        current = new
    async with as_token(server, current) as client:
        reply = await client.post("/deploy", json=deploy_body(app_project.path, "echo new"))
        assert reply.status_code == 200
        assert (await wait_for_status(client, reply.json()["job_id"]))["status"] == "complete"


async def test_a_status_poll_with_a_rotated_token_is_refused_and_reads_nothing(
    server: LiveServer, core: Deployster, app_project: Project, app_token: str
) -> None:
    """/status checks a cached project token inside its one Redis read: after
    a rotation the old token's very next poll is 403 and moves no cursor, so
    the new token's poll gets every line."""
    async with as_token(server, app_token) as client:
        assert (await client.get(f"/status/{UNKNOWN_ID}")).status_code == 404  # cached now
        reply = await client.post("/deploy", json=deploy_body(app_project.path, "echo kept"))
        job_id = reply.json()["job_id"]
        deadline = time.monotonic() + 20
        while (await client.get(f"/jobs/{job_id}")).json()["status"] != "complete":
            assert time.monotonic() < deadline, "the job did not end"
            await asyncio.sleep(0.05)
        new = await tokens.rotate(core.projects, await core.projects.find(app_project.name))
        refused = await client.get(f"/status/{job_id}")
        assert (refused.status_code, refused.json()) == (403, UNAUTHORIZED)
    async with as_token(server, new) as client:
        read = (await client.get(f"/status/{job_id}")).json()
    assert read["status"] == "complete" and "kept\n" in read["logs"]


async def test_revoked_token_is_refused_at_once(
    server: LiveServer, core: Deployster, app_project: Project, app_token: str
) -> None:
    async with as_token(server, app_token) as client:
        assert (await client.get(f"/status/{UNKNOWN_ID}")).status_code == 404
        assert await tokens.revoke(
            core.projects, await core.projects.find(app_project.name)) is True
        reply = await client.get(f"/status/{UNKNOWN_ID}")
        assert (reply.status_code, reply.json()) == (403, UNAUTHORIZED)
    assert await tokens.revoke(core.projects, await core.projects.find(app_project.name)) is False
    row = await core.db.fetch_one("SELECT token_hash FROM projects WHERE id = :id",
                                  {"id": app_project.id})
    assert row is not None and row["token_hash"] is None
    async with server.client() as admin:  # the admin token is unaffected
        assert (await admin.get(f"/status/{UNKNOWN_ID}")).status_code == 404


async def test_malformed_short_and_near_miss_tokens_are_403(
    server: LiveServer, app_project: Project, app_token: str
) -> None:
    body = app_token[4:]
    flipped = app_token[:-1] + ("a" if app_token[-1] != "a" else "b")
    candidates = [
        "", "dps_", "dps_x", app_token[:-1], app_token + "a", flipped, "DPS_" + body,
        app_token.lower() if app_token.lower() != app_token else app_token.upper(),
        body, f"{app_token} x", f"x{app_token}", app_token.replace("dps_", "dps-"),
        server.token[:-1], server.token + "x", tokens.generate(),
    ]
    async with as_token(server, app_token) as client:
        assert (await client.get(f"/status/{UNKNOWN_ID}")).status_code == 404
    for sent in candidates:
        async with as_token(server, sent) as client:
            reply = await client.post("/deploy", json=deploy_body(app_project.path, "echo x"))
            assert (reply.status_code, reply.json()) == (403, UNAUTHORIZED), sent
            reply = await client.get(f"/status/{UNKNOWN_ID}")
            assert reply.status_code == 403, sent
            reply = await client.post(f"/jobs/{UNKNOWN_ID}/cancel")
            assert reply.status_code == 403, sent


# ------------------------------------------------------------------ limits


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with server.client() as client:
        yield client


async def test_too_many_commands_is_422_and_nothing_is_queued(
    admin: httpx.AsyncClient, core: Deployster, app_project: Project
) -> None:
    body = deploy_body(app_project.path, *["true"] * 100)  # 101 with the supervisorctl line
    reply = await admin.post("/deploy", json=body)
    assert reply.status_code == 422
    data = reply.json()
    assert data["code"] == "too_many_commands" and "100" in data["error"]
    assert set(data) == {"error", "code"}
    await nothing_stored(core)

    reply = await admin.post("/deploy", json=deploy_body(app_project.path, *["true"] * 99))
    assert reply.status_code == 200
    assert (await wait_for_status(admin, reply.json()["job_id"]))["status"] == "complete"


async def test_a_command_over_64_kib_is_422_and_nothing_is_queued(
    admin: httpx.AsyncClient, core: Deployster, app_project: Project
) -> None:
    too_long = ": " + "x" * (64 * 1024 - 1)  # 65537 bytes
    reply = await admin.post("/deploy", json=deploy_body(app_project.path, too_long))
    assert reply.status_code == 422
    data = reply.json()
    assert data["code"] == "command_too_long" and "65536" in data["error"]
    # Bytes, not characters: 32769 two-byte characters are over the limit too.
    reply = await admin.post("/deploy", json=deploy_body(app_project.path, ": " + "é" * 32768))
    assert reply.json()["code"] == "command_too_long"
    await nothing_stored(core)

    exactly = ": " + "x" * (64 * 1024 - 2)
    reply = await admin.post("/deploy", json=deploy_body(app_project.path, exactly))
    assert reply.status_code == 200, reply.text
    assert (await wait_for_status(admin, reply.json()["job_id"]))["status"] == "complete"


@pytest.mark.parametrize("command", ["", "   ", "\t\n"])
async def test_empty_commands_are_refused(
    admin: httpx.AsyncClient, core: Deployster, app_project: Project, command: str
) -> None:
    reply = await admin.post("/deploy", json=deploy_body(app_project.path, "echo a", command))
    assert reply.status_code == 422 and reply.json()["code"] == "empty_command"
    await nothing_stored(core)


async def test_a_command_that_is_not_unicode_text_is_422(
    admin: httpx.AsyncClient, core: Deployster, app_project: Project
) -> None:
    body = json.dumps(deploy_body(app_project.path, "echo x")).replace("echo x", "echo \\ud800")
    reply = await admin.post("/deploy", content=body,
                             headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert reply.json()["code"] == "invalid_command"
    await nothing_stored(core)


async def test_limits_follow_the_settings(
    settings: Settings, core: Deployster, app_project: Project, app_token: str, tmp_path: Path
) -> None:
    live = start_server(settings, tmp_path / "limits.log", extra_env={
        "DEPLOYSTER_MAX_COMMANDS": "3", "DEPLOYSTER_MAX_COMMAND_BYTES": "40"})
    try:
        async with as_token(live, app_token) as client:
            reply = await client.post("/deploy", json=deploy_body(app_project.path, "true", "true",
                                                                  "true"))
            assert (reply.status_code, reply.json()["code"]) == (422, "too_many_commands")
            reply = await client.post("/deploy",
                                      json=deploy_body(app_project.path, "echo " + "x" * 36))
            assert (reply.status_code, reply.json()["code"]) == (422, "command_too_long")
            assert "command 1 is 41 bytes long, at most 40" in reply.json()["error"]
        await nothing_stored(core)
    finally:
        live.stop()


async def test_oversized_body_is_413_json_for_a_project_token_too(
    server: LiveServer, app_project: Project, app_token: str
) -> None:
    body = deploy_body(app_project.path, "echo " + "x" * (1024 * 1024))
    async with as_token(server, app_token) as client:
        reply = await client.post("/deploy", json=body)
    assert reply.status_code == 413
    assert reply.json()["code"] == "body_too_large"


# ------------------------------------------------------------ core, both databases


async def test_rotate_resolve_and_revoke_on_every_database(
    settings: Settings, any_database_url: str, project_dir: Path, tmp_path: Path
) -> None:
    """The migration and the token queries on SQLite and PostgreSQL alike."""
    the_core = await Deployster.open(settings.with_overrides(database_url=any_database_url))
    try:
        app = await the_core.projects.add(str(project_dir))
        (tmp_path / "api").mkdir()
        api = await the_core.projects.add(str(tmp_path / "api"))
        assert await the_core.authenticate(settings.token) is ADMIN
        assert await the_core.authenticate(None) is None
        app_token = await tokens.rotate(the_core.projects, app)
        api_token = await tokens.rotate(the_core.projects, api)
        assert await the_core.authenticate(app_token) == Principal(app.id, "my-app")
        caller = await the_core.authenticate(api_token)
        assert caller is not None and caller.label == "token:api"
        assert not caller.can_see(app.id) and caller.can_see(api.id)

        await tokens.revoke(the_core.projects, await the_core.projects.find("my-app"))
        assert await the_core.authenticate(app_token) is None
        assert await the_core.authenticate(api_token) == caller
        listed = {p.name: p.to_dict()["token_set"] for p in await the_core.projects.all()}
        assert listed == {"my-app": False, "api": True}
    finally:
        await the_core.close()
