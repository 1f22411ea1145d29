"""Schemathesis over ``/openapi.json`` of a served instance (issue #5): for every
documented operation, generated requests never get a 5xx and every reply
matches the documented status codes and response schemas.

Bounded: ``MAX_EXAMPLES`` per operation, no shrinking, no example database.

Nothing fuzzed can run a command on this machine: every generated ``POST
/deploy`` body has its ``cd`` replaced by a directory that is not registered
(and ``DEPLOYSTER_ALLOWED_ROOTS`` is unset, so nothing self-registers), which is
refused before anything is queued; the command list is still fuzzed, so the
body validation is exercised. Path ``job_id``s are generated, or — half of the
time — the id of a real, finished job (so the reads of a real record, log and
stream are fuzzed too, and a cancel of it is a 409, never a cancel).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from deployster.service import Deployster
from tests.conftest import LiveServer, deploy_body

# More (and random rather than fixed) examples for a deeper run: DEPLOYSTER_FUZZ_EXAMPLES=500.
MAX_EXAMPLES = int(os.environ.get("DEPLOYSTER_FUZZ_EXAMPLES", "25"))
NOT_REGISTERED = "/nonexistent/deployster-fuzz"
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture
async def registered(core: Deployster, project_dir: Path) -> Path:
    await core.projects.add(str(project_dir), pipeline=[
        {"stage_name": "Production", "git_branch": "main",
         "environment_variables": [{"key": "API_URL", "value": "https://example.test"}]},
    ])
    return project_dir


def finished_job(server: LiveServer, cd: Path) -> str:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        job_id = str(client.post("/deploy", json=deploy_body(cd, "echo fuzz")).json()["job_id"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if client.get(f"/status/{job_id}").json()["status"] in ("complete", "failed"):
                return job_id
            time.sleep(0.05)
    raise AssertionError("the setup job did not finish")


def fuzz(operation: Any, mode: GenerationMode, server: LiveServer, real_job: str,
         seen: dict[str, Counter[int]]) -> None:
    """Up to ``MAX_EXAMPLES`` generated requests to one operation, checked."""

    @given(case=operation.as_strategy(generation_mode=mode), real=st.booleans())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time
        suppress_health_check=list(HealthCheck),
        derandomize="DEPLOYSTER_FUZZ_EXAMPLES" not in os.environ,
        database=None,
    )
    def run(case: Any, real: bool) -> None:
        if "job_id" in (case.path_parameters or {}) and real:
            case.path_parameters["job_id"] = real_job
        if isinstance(case.body, dict) and "cd" in case.body:
            case.body["cd"] = NOT_REGISTERED
            commands = case.body.get("commands")
            if real and isinstance(commands, list) and commands:
                commands[-1] = "supervisorctl restart fuzz"  # valid: reach the lookup
        response = case.call_and_validate(headers=server.headers, checks=CHECKS, timeout=30)
        label = f"{operation.method.upper()} {operation.path}"
        seen.setdefault(label, Counter())[response.status_code] += 1

    run()


def test_every_operation_survives_generated_requests(
    server: LiveServer, registered: Path
) -> None:
    real_job = finished_job(server, registered)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /deploy", "GET /status/{job_id}", "GET /healthz", "POST /jobs/{job_id}/cancel",
            "GET /jobs/{job_id}", "GET /jobs/{job_id}/logs", "GET /jobs/{job_id}/stream",
            "GET /projects"} <= labels

    failures: list[str] = []
    seen: dict[str, Counter[int]] = {}
    for operation in operations:
        inputs = [operation.path_parameters, operation.query, operation.headers, operation.body]
        modes = [GenerationMode.POSITIVE]
        if any(len(part) for part in inputs):  # negative data needs something to break
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            try:
                fuzz(operation, mode, server, real_job, seen)
            except Exception as exc:  # one report listing every operation that failed
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): "
                                f"{exc}")
    assert not failures, "\n\n".join(failures)
    print(seen)
    # Both real and generated ids were read; nothing was ever deployed.
    assert seen["POST /deploy"][404], seen["POST /deploy"]
    for label in ("GET /jobs/{job_id}", "GET /jobs/{job_id}/logs", "GET /jobs/{job_id}/stream"):
        assert seen[label][200] and seen[label][404], (label, seen[label])
    assert 200 not in seen["POST /deploy"], seen["POST /deploy"]
    assert 200 not in seen["POST /jobs/{job_id}/cancel"], seen
    assert "Traceback" not in server.log()
