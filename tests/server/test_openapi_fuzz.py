"""Schemathesis over ``/openapi.json`` of a served instance
(docs/api.md#get-openapijson-and-get-docs): the
``schemathesis run --checks all`` a reviewer runs, as a test. For every
documented operation, generated requests never get a 5xx, every reply matches
the documented status codes, headers and schemas, what the schema accepts the
server accepts and what it refuses the server refuses, and an undeclared
method is a 405 with an ``Allow`` header.

Bounded: ``MAX_EXAMPLES`` per operation, no shrinking, deterministic data
(``DEPLOYSTER_FUZZ_EXAMPLES=500`` runs more, random, examples), one worker.

Nothing fuzzed can run a command on this machine, and schema-valid bodies carry
a valid last command: see ``tests/server/schemathesis_hooks.py``. Path
``job_id``s are generated, or the id of a real, finished job (so the reads of a
real record, log and stream are fuzzed too, and a cancel of it is a 409, never
a cancel; its command holds a stage secret, so a redeploy or rollback of it is
a 409 too, never a run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from deployster.service import Deployster
from tests.helpers.deploys import deploy_body
from tests.helpers.paths import REPO
from tests.helpers.server import LiveServer

MAX_EXAMPLES = int(os.environ.get("DEPLOYSTER_FUZZ_EXAMPLES", "25"))
NOT_REGISTERED = "/nonexistent/deployster-fuzz"
OPERATIONS = {"POST /deploy", "GET /status/{job_id}", "GET /healthz", "GET /client",
              "POST /jobs/{job_id}/cancel", "GET /jobs/{job_id}", "GET /jobs/{job_id}/logs",
              "GET /jobs/{job_id}/stream", "GET /projects", "POST /jobs/{job_id}/redeploy",
              "POST /projects/{name}/rollback", "GET /metrics"}


@pytest.fixture
async def registered(core: Deployster, project_dir: Path) -> Path:
    await core.projects.add(str(project_dir), pipeline=[
        {"stage_name": "Production", "git_branch": "main",
         "environment_variables": [{"key": "API_URL", "value": "https://example.test"}]},
    ])
    return project_dir


def finished_job(server: LiveServer, cd: Path) -> str:
    """A finished job that cannot be run again: its command holds the stage's
    secret, so a fuzzed redeploy or rollback of it is refused (409)."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        job_id = str(client.post("/deploy", json=deploy_body(
            cd, "echo fuzz https://example.test")).json()["job_id"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if client.get(f"/status/{job_id}").json()["status"] in ("complete", "failed"):
                return job_id
            time.sleep(0.05)
    raise AssertionError("the setup job did not finish")


def schemathesis_run(server: LiveServer, workdir: Path, real_job: str) -> tuple[int, str, Path]:
    """``schemathesis run --checks all`` against ``server``: (exit code, output,
    the file of [operation, status] lines the hooks wrote)."""
    seen = workdir / "seen.jsonl"
    deep = "DEPLOYSTER_FUZZ_EXAMPLES" in os.environ
    args = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
            "--checks", "all", "-H", f"x-deployster-token: {server.token}",
            "--max-examples", str(MAX_EXAMPLES), "--no-shrink", "--workers", "1",
            "--request-timeout", "30", "--no-color", "--output-sanitize", "true",
            *([] if deep else ["--generation-deterministic"])]
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "SCHEMATHESIS_HOOKS": "tests.server.schemathesis_hooks",
           "DEPLOYSTER_FUZZ_CD": NOT_REGISTERED, "DEPLOYSTER_FUZZ_JOB": real_job,
           "DEPLOYSTER_FUZZ_SEEN": str(seen)}
    result = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=600)
    return result.returncode, result.stdout + result.stderr, seen


def test_every_operation_passes_every_schemathesis_check(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    real_job = finished_job(server, registered)
    code, output, seen_file = schemathesis_run(server, tmp_path, real_job)
    # The report names each failure with its reproduction; bodies can be huge.
    report = "\n".join(line[:500] for line in output.splitlines())
    assert code == 0, report

    seen: dict[str, Counter[int]] = {}
    for line in seen_file.read_text().splitlines():
        label, status = json.loads(line)
        seen.setdefault(label, Counter())[status] += 1
    assert OPERATIONS <= set(seen), sorted(seen)
    # Undeclared methods were tried on every path (each a 405 with Allow, or the
    # unsupported_method check would have failed).
    paths = {label.split(" ", 1)[1] for label in OPERATIONS}
    for path in paths:
        assert seen.get(f"TRACE {path}", Counter())[405], (path, sorted(seen))
    # Both real and generated ids were read; nothing was ever deployed.
    assert seen["POST /deploy"][404], seen["POST /deploy"]
    assert 200 not in seen["POST /deploy"], seen["POST /deploy"]
    for label in ("GET /jobs/{job_id}", "GET /jobs/{job_id}/logs", "GET /jobs/{job_id}/stream"):
        # A generated id: 404, or 400 when the generated cursor is refused first.
        assert seen[label][200] and seen[label][404] + seen[label][400], (label, seen[label])
    # Nothing was run again either.
    for label in ("POST /jobs/{job_id}/redeploy", "POST /projects/{name}/rollback"):
        assert 200 not in seen[label], (label, seen[label])
    assert 200 not in seen["POST /jobs/{job_id}/cancel"], seen
    assert "Traceback" not in server.log()
