"""Secrets out of logs (docs/runner.md#secrets), end to end: a served instance runs real
commands that print a stage's values, the admin token and a project token in
many forms; none of them reaches /status, the Redis stream or the SQL history."""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
import sys
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

from deployster.logstream import read_full_log
from deployster.masking import MASK
from deployster.service import Deployster
from tests.helpers.deploys import deploy_body, history_log, wait_for_status
from tests.helpers.server import TOKEN, LiveServer
from tests.test_masking import secret_span, wrap_masked

API_KEY = "Sup3r-s3cret/Value+42"
PASSPHRASE = "open sesame $ecret's"
PROJECT_TOKEN = "dps_" + "Zq8Lm3Nx7Pw2Rt5Vy9Bc4Df6Gh1Jk0Ms8Qa3We7U"
PY = shlex.quote(sys.executable)

PIPELINE = [
    {"stage_name": "Production", "git_branch": "main", "environment_variables": [
        {"key": "API_KEY", "value": API_KEY},
        {"key": "PASSPHRASE", "value": PASSPHRASE},
        {"key": "DEBUG", "value": "1"},  # too short to mask
    ]},
    {"stage_name": "Staging", "git_branch": "dev", "environment_variables": [
        {"key": "STAGING_ONLY", "value": "staging-only-value"},
    ]},
]

# The stage's variables are in the commands' environment (runner.child_env); the
# .env file is for dotenv readers, not for `.` (sh would expand "$ecret" in it).
LOAD = ""
COMMANDS = [
    LOAD + 'echo "raw:$API_KEY:end"',
    LOAD + 'printf %s "$API_KEY" | base64',
    LOAD + 'printf "user:%s" "$API_KEY" | base64',
    LOAD + 'printf %s "$API_KEY" | ' + PY + " -c 'import base64,sys; "
    "print(base64.urlsafe_b64encode(sys.stdin.buffer.read()).decode())'",
    LOAD + PY + " -c 'import os,urllib.parse as u; v=os.environ[\"API_KEY\"]; "
    "print(\"q:\"+u.quote(v), \"s:\"+u.quote(v, safe=\"\"), \"p:\"+u.quote_plus(v))'",
    LOAD + PY + " -c 'import os,json,shlex; v=os.environ[\"PASSPHRASE\"]; "
    "print(\"sh:\"+shlex.quote(v)); print(\"js:\"+json.dumps(v))'",
    LOAD + "bash -c 'printf \"q:%q\\n\" \"$1\"' _ \"$PASSPHRASE\"",
    # Another stage's value (not in this job's .env) is a secret too.
    LOAD + 'echo "staging-only-value" "debug=$DEBUG"',
    # Split across two writes with a pause between: two stream entries.
    LOAD + "printf 'split:%s' \"$(printf %s \"$API_KEY\" | cut -c1-9)\"; sleep 0.3; "
    "printf '%s:end\\n' \"$(printf %s \"$API_KEY\" | cut -c10-)\"",
    f"echo admin={TOKEN}",
    f"echo project={PROJECT_TOKEN}; printf 'Bearer:%s' {PROJECT_TOKEN} | base64",
    # The command itself holds the value: its header line is masked too.
    f"echo header-check >/dev/null # {API_KEY}",
    # Wrapped base64, the value split by the wrap (76 columns, then 64), once
    # in one write, once written in two with a pause: inside the first line, and
    # right after its line break.
    LOAD + '(printf %050d 0; printf %s "$API_KEY") | base64',
    LOAD + '(printf %040d 0; printf %s "$API_KEY") | base64 -w 64',
    LOAD + '(printf %050d 0; printf %s "$API_KEY") | base64 > b64.txt; '
    "head -c 70 b64.txt; sleep 0.3; tail -c +71 b64.txt",
    LOAD + '(printf %040d 0; printf %s "$API_KEY") | base64 -w 64 > b64.txt; '
    "head -c 65 b64.txt; sleep 0.3; tail -c +66 b64.txt",
]
# What those print, masked: the value's characters on each line as one ***.
WRAPPED = [wrap_masked(blob, width, secret_span(blob, lead, len(API_KEY)))
           for lead, width in ((50, 76), (40, 64))
           for blob in [base64.b64encode(b"0" * lead + API_KEY.encode()).decode()]]


def leaked_forms() -> dict[str, str]:
    raw = API_KEY.encode()
    forms = {
        "raw": API_KEY,
        "b64": base64.b64encode(raw).decode(),
        "b64 core": base64.b64encode(raw).decode()[:24],
        "b64 user": base64.b64encode(b"user:" + raw).decode()[8:32],
        "b64url": base64.urlsafe_b64encode(raw).decode()[:24],
        "quote": quote(API_KEY),
        "quote safe": quote(API_KEY, safe=""),
        "quote_plus": quote_plus(API_KEY),
        "passphrase": PASSPHRASE,
        "shlex": shlex.quote(PASSPHRASE),
        "json": json.dumps(PASSPHRASE),
        "printf %q": "open\\ sesame\\ \\$ecret\\'s",
        "staging": "staging-only-value",
        "admin": TOKEN,
        "project token": PROJECT_TOKEN,
        "project token body": PROJECT_TOKEN[4:],
        "project token b64": base64.b64encode(b"Bearer:" + PROJECT_TOKEN.encode()).decode()[12:60],
        "first half": API_KEY[:9] + API_KEY[9:12],
    }
    for lead, width in ((50, 76), (40, 64)):  # the two pieces a wrap makes of it
        blob = base64.b64encode(b"0" * lead + API_KEY.encode()).decode()
        start, end = secret_span(blob, lead, len(API_KEY))
        forms[f"wrapped at {width}, line 1"] = blob[start:width]
        forms[f"wrapped at {width}, line 2"] = blob[width:end]
    return forms


def assert_masked(where: str, log: str) -> None:
    for name, form in leaked_forms().items():
        assert form not in log, f"{name} ({form!r}) leaked into {where}:\n{log}"
    expected_lines = [
        f"raw:{MASK}:end",
        f"split:{MASK}:end",
        f"admin={MASK}",
        f"project={MASK}",
        f"q:{MASK} s:{MASK} p:{MASK}",
        f"sh:{MASK}",
        f'js:"{MASK}"',
        f"q:{MASK}",
        f"{MASK} debug=1",
        f"$ echo header-check >/dev/null # {MASK}",
    ]
    for line in expected_lines:
        assert line in log, f"{line!r} missing from {where}:\n{log}"
    for masked in WRAPPED:  # each twice: in one write, and in two
        assert log.count(masked) == 2, f"{masked!r} not twice in {where}:\n{log}"
    lines = log.splitlines()
    # The standalone base64 lines are masked whole, padding included.
    assert lines.count(MASK) >= 2, f"{where}:\n{log}"
    assert "[deployster] job complete" in log


async def test_secrets_never_reach_status_the_stream_or_history(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir), pipeline=PIPELINE)
    async with server.client() as client:
        reply = await client.post("/deploy", json=deploy_body(project_dir, *COMMANDS))
        assert reply.status_code == 200, reply.text
        job_id = reply.json()["job_id"]
        chunks: list[str] = []
        deadline = time.monotonic() + 60
        while True:
            status = (await client.get(f"/status/{job_id}")).json()
            chunks.append(status.get("logs", ""))
            if status["status"] in ("complete", "failed") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        # The record shows the commands masked too (one of them holds the value).
        record = (await client.get(f"/jobs/{job_id}")).json()
        assert API_KEY not in json.dumps(record)
        assert any(MASK in command for command in record["commands"])
    status_log = "".join(chunks)
    assert status["status"] == "complete", status_log
    # The reply that first said "complete" carried the last lines, masked.
    assert "job complete" in chunks[-1]
    assert_masked("/status", status_log)

    stream_log = await read_full_log(core.redis, core.keys, job_id)
    assert stream_log == status_log
    assert_masked("the Redis stream", stream_log)

    stored = await history_log(core, job_id)
    assert "job complete" in stored
    assert stored == stream_log
    assert_masked("the SQL history", stored)


async def test_a_job_without_secrets_is_logged_unchanged(
    server: LiveServer, core: Deployster, project_dir: Path
) -> None:
    await core.projects.add(str(project_dir))
    text = "plain output, nothing secret: d k Z R 1 2 3"
    body = deploy_body(project_dir, f"printf '%s\\n' '{text}'", "printf 'no newline d'")
    async with server.client() as client:
        job_id = (await client.post("/deploy", json=body)).json()["job_id"]
        final = await wait_for_status(client, job_id)
    assert final["status"] == "complete"
    log = await read_full_log(core.redis, core.keys, job_id)
    assert f"{text}\n" in log
    # A header starts a line of its own, after output with no final newline too.
    assert "no newline d\n[deployster] $ supervisorctl reread" in log
    assert MASK not in log
