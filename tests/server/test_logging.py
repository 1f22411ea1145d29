"""The server's log: one line a request and one a job event, as text or as
JSON (``DEPLOYSTER_LOG_FORMAT``), never with a token in it. A real served
instance, its real log."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.server import LiveServer, serving

WRONG = "wrong-token-never-logged"


async def exercise(server: LiveServer, core: Deployster, project_dir: Path) -> str:
    """A deploy run to its end, its status read, and a refused request: the job id."""
    await core.projects.add(str(project_dir))
    async with server.client() as client:
        reply = await client.post("/deploy", json=deploy_body(project_dir, "echo hi"))
        job_id = str(reply.json()["job_id"])
        await wait_for_status(client, job_id)
    async with httpx.AsyncClient(base_url=server.url,
                                 headers={"x-deployster-token": WRONG}) as stranger:
        assert (await stranger.post("/deploy", json={})).status_code == 403
    return job_id


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_json_lines_for_requests_and_job_events(
    settings: Settings, tmp_path: Path, core: Deployster, project_dir: Path
) -> None:
    with contextmanager(serving)(settings, tmp_path, DEPLOYSTER_LOG_FORMAT="json") as live:
        job_id = await exercise(live, core, project_dir)
        log = live.log()
    lines = json_lines(log)
    requests = [line for line in lines if line["logger"] == "deployster.requests"]
    deploy = next(r for r in requests if r["message"] == "POST /deploy 200")
    assert deploy["job_id"] == job_id and deploy["project"] == project_dir.name
    assert isinstance(deploy["ms"], float) and deploy["level"] == "info" and deploy["time"]
    polls = [r for r in requests if r["message"].startswith(f"GET /status/{job_id} 200")]
    assert polls and all(p["job_id"] == job_id for p in polls)
    assert any(r["message"] == "POST /deploy 403" for r in requests)
    events = {line["event"]: line for line in lines
              if line["logger"] == "deployster.jobs" and line.get("job_id") == job_id}
    assert set(events) == {"queued", "started", "finished"}
    assert events["finished"]["status"] == "complete"
    assert events["finished"]["exit_code"] == 0 and events["finished"]["seconds"] >= 0
    assert WRONG not in log and live.token not in log


async def test_text_lines_by_default(
    settings: Settings, tmp_path: Path, core: Deployster, project_dir: Path
) -> None:
    with contextmanager(serving)(settings, tmp_path) as live:
        job_id = await exercise(live, core, project_dir)
        log = live.log()
    deploy = next(line for line in log.splitlines()
                  if "deployster.requests: POST /deploy 200" in line)
    assert f"job_id={job_id}" in deploy and f"project={project_dir.name}" in deploy
    assert "ms=" in deploy
    assert any(f"job {job_id} complete in " in line and "event=finished" in line
               for line in log.splitlines())
    assert WRONG not in log and live.token not in log
