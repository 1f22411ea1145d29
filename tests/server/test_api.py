"""The seed's API contract (docs/api.md#seed-compatibility) over real HTTP against
`deployster serve`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from deployster.server.api import plain_deploy_body
from deployster.server.schemas import DeployBody
from deployster.service import DeployRequest, Deployster
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.server import LiveServer

QUEUED = "Another deployment is running; this job is queued."


@pytest.fixture
async def registered(core: Deployster, project_dir: Path) -> Path:
    await core.projects.add(str(project_dir))
    return project_dir


async def test_free_lock_starts_at_once_and_body_is_exactly_job_id(
    server: LiveServer, registered: Path
) -> None:
    async with server.client() as client:
        reply = await client.post("/deploy", json=deploy_body(registered, "echo hi"))
        assert reply.status_code == 200
        body = reply.json()
        assert list(body) == ["job_id"]
        final = await wait_for_status(client, body["job_id"])
    assert final["status"] == "complete"
    assert "hi\n" in final["logs"]
    assert "supervisorctl: restart my-app--main" in final["logs"]


async def test_held_lock_queues_with_the_seed_body_and_runs_after(
    server: LiveServer, registered: Path
) -> None:
    async with server.client() as client:
        first = (await client.post("/deploy", json=deploy_body(registered, "sleep 1"))).json()
        second = (await client.post("/deploy", json=deploy_body(registered, "echo two"))).json()
        assert second == {"job_id": second["job_id"], "queued": True, "message": QUEUED}
        status = (await client.get(f"/status/{second['job_id']}")).json()
        assert status["status"] == "queued" and status["position"] == 1
        a = await wait_for_status(client, first["job_id"])
        b = await wait_for_status(client, second["job_id"])
    assert a["status"] == b["status"] == "complete"
    assert "two\n" in b["logs"] and "two\n" not in a["logs"]


async def test_status_cursor_never_loses_or_repeats_a_line(
    server: LiveServer, registered: Path
) -> None:
    script = "for i in $(seq 1 200); do echo line-$i; sleep 0.005; done"
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(registered, script))).json()
        chunks: list[str] = []
        while True:
            reply = (await client.get(f"/status/{job['job_id']}")).json()
            chunks.append(reply["logs"])
            if reply["status"] in ("complete", "failed"):
                break
            await asyncio.sleep(0.02)
    assert len([c for c in chunks if c]) > 1, "expected the log to arrive over several calls"
    text = "".join(chunks)
    lines = [line for line in text.splitlines() if line.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 201)]
    # The reply that said "complete" carried the last lines.
    assert "job complete" in chunks[-1]


async def test_other_readers_are_not_affected_by_the_status_cursor(
    server: LiveServer, registered: Path, core: Deployster
) -> None:
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(registered, "echo once"))).json()
        final = await wait_for_status(client, job["job_id"])
        again = (await client.get(f"/status/{job['job_id']}")).json()
    assert "once\n" in final["logs"]
    assert again["status"] == "complete" and again["logs"] == ""
    from deployster.logstream import read_full_log

    assert "once\n" in await read_full_log(core.redis, core.keys, job["job_id"])


async def test_failed_command_reports_failed_with_reason(
    server: LiveServer, registered: Path
) -> None:
    async with server.client() as client:
        job = (await client.post("/deploy", json=deploy_body(registered, "echo a; exit 3"))).json()
        final = await wait_for_status(client, job["job_id"])
    assert final["status"] == "failed"
    assert final["reason"] == "command_failed"
    assert "exited with code 3" in final["logs"]
    assert "supervisorctl:" not in final["logs"]  # later commands did not run


@pytest.mark.parametrize("headers", [{}, {"x-deployster-token": "wrong"}])
async def test_bad_token_is_403_unauthorized(
    server: LiveServer, registered: Path, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
        reply = await client.post("/deploy", json=deploy_body(registered, "echo x"))
        assert reply.status_code == 403
        assert reply.json()["error"] == "Unauthorized"
        assert "x-deployster-token" in reply.json()["hint"]  # the header a newcomer missed
        status = await client.get("/status/01JD0000000000000000000000")
        assert status.status_code == 403


async def test_unknown_job_is_404_not_found(server: LiveServer) -> None:
    async with server.client() as client:
        for job_id in ("01JD0000000000000000000000", "null", "nope"):
            reply = await client.get(f"/status/{job_id}")
            assert reply.status_code == 404
            assert reply.json() == {"status": "not_found"}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[]", 422, "invalid_body"),
        (b'"text"', 422, "invalid_body"),
        (b'{"cd": "/x"}', 422, "invalid_body"),
        (b'{"cd": 5, "commands": ["supervisorctl restart a"], "commit_hash": "a", '
         b'"ref_name": "main"}', 422, "invalid_body"),
        (b'{"cd": "/x", "commands": "supervisorctl restart a", "commit_hash": "a", '
         b'"ref_name": "main"}', 422, "invalid_body"),
        (b'{"cd": "/x", "commands": [1], "commit_hash": "a", "ref_name": "main"}',
         422, "invalid_body"),
        (b'{"cd": "/x", "commands": [], "commit_hash": "a", "ref_name": "main"}',
         422, "empty_commands"),
        (b'{"cd": "/x", "commands": ["  "], "commit_hash": "a", "ref_name": "main"}',
         422, "empty_command"),
        (b'{"cd": "/x", "commands": ["echo a"], "commit_hash": "a", "ref_name": "main"}',
         422, "invalid_last_command"),
        (b'{"cd": "/x", "commands": ["supervisorctl restart a; rm -rf /"], '
         b'"commit_hash": "a", "ref_name": "main"}', 422, "invalid_last_command"),
    ],
)
async def test_bad_bodies_are_clear_4xx_and_store_nothing(
    server: LiveServer, registered: Path, core: Deployster, body: bytes, status: int, code: str
) -> None:
    body = body.replace(b'"/x"', f'"{registered}"'.encode())
    async with server.client() as client:
        reply = await client.post(
            "/deploy", content=body, headers={"content-type": "application/json"}
        )
    assert reply.status_code == status, reply.text
    data = reply.json()
    assert data["code"] == code and data["error"]
    assert await core.redis.keys(f"{core.keys.prefix}job:*") == []


@pytest.mark.parametrize(
    "body",
    [
        '{"cd": "/x", "commands": ["supervisorctl restart a"]}',
        '{"cd": "/x", "commands": ["true", "supervisorctl restart a"], "commit_hash": "c0ffee",'
        ' "ref_name": "main", "extra": [1, {"x": null}]}',
        '{"cd": "/x", "commands": []}',
        '{"cd": "", "commands": [""], "commit_hash": "", "ref_name": ""}',
        '{"cd": "/x\\u0000\\ud800", "commands": ["\\u00e9"]}',
        '{"cd": "/x", "commands": ["a"], "commit_hash": null}',
        '{"cd": "/x", "commands": ["a"], "node": "web-2"}',
        '{"cd": "/x", "commands": ["a"], "node": null}',
        '{"cd": "/x", "commands": ["a"], "node": ""}',
        '{"cd": "/x", "commands": ["a"], "node": 5}',
        '{"cd": "/x", "commands": ["a"], "ref_name": 5}',
        '{"cd": "/x", "commands": ["a", null]}',
        '{"cd": "/x", "commands": [["a"]]}',
        '{"cd": "/x", "commands": "a"}',
        '{"cd": "/x", "commands": {"0": "a"}}',
        '{"cd": true, "commands": ["a"]}',
        '{"cd": 1.5, "commands": ["a"]}',
        '{"cd": "/x"}',
        '{"commands": ["a"]}',
        "{}",
        '[{"cd": "/x", "commands": ["a"]}]',
        '"text"',
        "5",
        "null",
    ],
)
def test_the_plain_body_check_takes_what_the_schema_takes(body: str) -> None:
    """``POST /deploy`` reads a well-formed body without pydantic
    (``plain_deploy_body``); pydantic reads, and refuses, every other. What the
    plain check takes, ``DeployBody`` takes alike."""
    data = json.loads(body)
    plain = plain_deploy_body(data)
    try:
        model = DeployBody.model_validate(data)
    except ValidationError:
        assert plain is None
        return
    assert plain == DeployRequest(**model.model_dump())


async def test_oversized_body_is_413_json(server: LiveServer, registered: Path) -> None:
    body = deploy_body(registered, "echo " + "x" * (2 * 1024 * 1024))
    async with server.client() as client:
        reply = await client.post("/deploy", json=body)
    assert reply.status_code == 413
    assert reply.json()["code"] == "body_too_large"


async def test_unknown_project_tells_how_to_register(server: LiveServer, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with server.client() as client:
        reply = await client.post("/deploy", json=deploy_body(elsewhere, "echo x"))
    assert reply.status_code == 404
    assert reply.json()["code"] == "unknown_project"
    assert f"deployster project add {elsewhere}" in reply.json()["error"]


async def test_healthz_reports_redis_and_database(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        reply = await client.get("/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok", "redis": "ok", "database": "ok"}


def test_sigterm_stops_the_server_cleanly(server: LiveServer) -> None:
    assert server.stop() == 0
    assert "Traceback" not in server.log()
    assert "Error" not in server.log()


async def test_openapi_document_lists_the_endpoints(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        reply = await client.get("/openapi.json")
    assert reply.status_code == 200
    paths = reply.json()["paths"]
    for path in ("/deploy", "/status/{job_id}", "/jobs/{job_id}/cancel", "/healthz", "/client"):
        assert path in paths, sorted(paths)
    served = paths["/client"]["get"]
    assert served["security"] == [] and list(served["responses"]) == ["200"]
    assert list(served["responses"]["200"]["content"]) == ["text/x-python"]
    body = paths["/deploy"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body  # generated from the DeployBody model


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded",
                                          "text/plain"])
async def test_a_json_body_is_taken_whatever_its_content_type_says(
    server: LiveServer, registered: Path, content_type: str | None
) -> None:
    # curl -d sends application/x-www-form-urlencoded unless told otherwise.
    body = json.dumps(deploy_body(registered, "echo from-curl-d")).encode()
    headers = {} if content_type is None else {"content-type": content_type}
    async with server.client() as client:
        reply = await client.post("/deploy", content=body, headers=headers)
        assert reply.status_code == 200, reply.text
        final = await wait_for_status(client, reply.json()["job_id"])
    assert final["status"] == "complete" and "from-curl-d" in str(final["logs"])


async def test_a_body_that_is_no_json_says_what_was_expected(
    server: LiveServer, registered: Path, core: Deployster
) -> None:
    async with server.client() as client:
        reply = await client.post("/deploy", content=b"cd=/srv/app&commands=x",
                                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert reply.status_code == 400
    data = reply.json()
    assert data["code"] == "invalid_json"
    assert '"commands"' in data["error"] and '"ref_name"' in data["error"]
    assert await core.redis.keys(f"{core.keys.prefix}job:*") == []


async def test_an_identical_queued_request_says_it_was_deduplicated(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    hold = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    async with server.client() as client:
        first = (await client.post("/deploy", json=deploy_body(registered, hold))).json()
        body = deploy_body(registered, "echo same", commit="c1")
        queued = (await client.post("/deploy", json=body)).json()
        again = (await client.post("/deploy", json=body)).json()
        gate.touch()
        await wait_for_status(client, first["job_id"])
    assert "deduplicated" not in queued and queued["queued"] is True
    assert again["job_id"] == queued["job_id"] and again["deduplicated"] is True
