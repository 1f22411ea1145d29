"""Attacks on the hardened API, over real HTTP against ``deployster serve``:
real Redis, real database, no mocks. Each test is the regression test of a
defect an attack found; the code that holds the rule names its test."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema_rs

from deployster import store, tokens
from deployster.models import Project
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.cli import one_line_error
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.paths import REPO
from tests.helpers.server import LiveServer, settings_env, start_server

UNAUTHORIZED = {"error": "Unauthorized", "code": "unauthorized",
                "hint": "send the admin token or the project's token in the "
                        "x-deployster-token header"}
MIB = 1024 * 1024


async def nothing_stored(core: Deployster) -> None:
    assert await core.redis.keys(f"{core.keys.prefix}job:*") == []
    assert await core.redis.keys(f"{core.keys.prefix}queue:*") == []
    assert await store.select_deployments(core.db) == []


def no_traceback(server: LiveServer) -> None:
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log


# ------------------------------------------------------- child environment


async def test_commands_do_not_inherit_the_servers_settings(
    server: LiveServer, app_project: Project
) -> None:
    # DEPLOYSTER_REDIS_URL / DEPLOYSTER_DATABASE_URL may hold passwords that no
    # masker knows: `env` in a deploy printed them into the log.
    async with server.client() as client:
        reply = await client.post("/deploy", json=deploy_body(app_project.path, "env"))
        final = await wait_for_status(client, reply.json()["job_id"])
    assert final["status"] == "complete", final
    logs = str(final["logs"])
    assert f"DEPLOYSTER_JOB_ID={reply.json()['job_id']}" in logs  # the job's own do pass
    for name in ("DEPLOYSTER_REDIS_URL", "DEPLOYSTER_DATABASE_URL", "DEPLOYSTER_TOKEN",
                 "DEPLOYSTER_DATA_DIR", "DEPLOYSTER_NAMESPACE"):
        assert f"{name}=" not in logs, name
    assert not server.settings.redis_url or server.settings.redis_url not in logs


# ------------------------------------------------------------------ tokens


async def test_a_request_with_several_token_headers_is_refused(
    server: LiveServer, core: Deployster, app_project: Project, other: Project
) -> None:
    # The first header used to win: "good, bad" passed, "bad, good" did not,
    # and two project tokens acted as the first one's project.
    app_token = await tokens.rotate(core.projects, app_project)
    other_token = await tokens.rotate(core.projects, other)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for pair in ((server.token, "wrong"), ("wrong", server.token),
                     (server.token, server.token), (app_token, other_token),
                     (app_token, app_token)):
            headers = [("x-deployster-token", pair[0]), ("x-deployster-token", pair[1])]
            reply = await client.get("/projects", headers=headers)
            assert reply.status_code == 403 and reply.json() == UNAUTHORIZED, pair
            reply = await client.post("/deploy", headers=headers,
                                      json=deploy_body(app_project.path, "echo x"))
            assert reply.status_code == 403 and reply.json() == UNAUTHORIZED, pair
        # One header is still enough.
        reply = await client.get("/projects", headers={"x-deployster-token": app_token})
        assert reply.status_code == 200
        assert [p["name"] for p in reply.json()["projects"]] == ["my-app"]
    await nothing_stored(core)


def raw_request(server: LiveServer, request: bytes) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


async def test_odd_token_headers_never_reach_a_500(server: LiveServer) -> None:
    token = server.token.encode()
    cases = [
        b"\xc3\xa9" + token,  # non-ASCII (latin-1 decoded by the server)
        token + b"\xff",
        token[:-1],  # a prefix and an extension of the admin token
        token + b"x",
        b"a\x01b\x7f",
        b"x" * 20000,  # long, under Hypercorn's header limit
    ]
    for value in cases:
        reply = await asyncio.to_thread(raw_request, server, (
            b"GET /projects HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"x-deployster-token: " + value + b"\r\n\r\n"))
        assert reply.startswith(b"HTTP/1.1 403"), (value[:20], reply[:200])
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1]) == UNAUTHORIZED
    reply = await asyncio.to_thread(raw_request, server, (
        b"GET /projects HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"x-deployster-token: " + b"x" * 200_000 + b"\r\n\r\n"))
    assert reply.startswith(b"HTTP/1.1 431")  # Hypercorn's own limit, no traceback
    no_traceback(server)


def test_admin_token_comparison_does_not_depend_on_its_length() -> None:
    # Compared as SHA-256 digests: equal lengths whatever was sent.
    assert tokens.is_admin_token("s3cret-admin", "s3cret-admin")
    for sent in ("", "s3cret-admi", "s3cret-admin ", "S3cret-admin", "\udcff"):
        assert not tokens.is_admin_token(sent, "s3cret-admin")
    assert not tokens.is_admin_token("anything", None)


# ------------------------------------------------------------------ bodies


def send_chunked(server: LiveServer, total: int, *, token: str | None = None,
                 payload: bytes | None = None) -> bytes:
    """POST /deploy with Transfer-Encoding: chunked (no Content-Length)."""
    host, port = server.url.removeprefix("http://").split(":")
    head = (b"POST /deploy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n")
    if token is not None:
        head += b"x-deployster-token: " + token.encode() + b"\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + b"\r\n")
        try:
            if payload is not None:
                sock.sendall(b"%x\r\n%s\r\n" % (len(payload), payload))
            else:
                block = b" " * 65536
                sent = 0
                while sent < total:
                    part = block[: min(len(block), total - sent)]
                    sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
                    sent += len(part)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the answer is still there to read
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_chunked_bodies_over_the_limit_are_413_and_never_held_whole(
    server: LiveServer, core: Deployster, app_project: Project
) -> None:
    expected = b'"error":"the request body is larger than 1048576 bytes"'
    # Just over the limit, with and without a token.
    for token in (server.token, None, "wrong"):
        reply = await asyncio.to_thread(send_chunked, server, MIB + 1, token=token)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert expected in reply
    # Past Quart's backstop (64 MiB): the message names the configured limit.
    reply = await asyncio.to_thread(send_chunked, server, 65 * MIB)
    assert reply.startswith(b"HTTP/1.1 413") and expected in reply, reply[:300]
    # Unauthenticated uploads of 40 MiB each, four at once: read and dropped as
    # they come, not buffered whole (the server used to hold every one of them).
    before = peak_rss(server.process.pid)
    replies = await asyncio.gather(*(asyncio.to_thread(send_chunked, server, 40 * MIB)
                                     for _ in range(4)))
    assert all(r.startswith(b"HTTP/1.1 413") for r in replies)
    grown = peak_rss(server.process.pid) - before
    assert grown < 40 * MIB, f"peak RSS grew by {grown / MIB:.0f} MiB"
    await nothing_stored(core)
    no_traceback(server)


async def test_a_small_chunked_body_still_deploys(
    server: LiveServer, app_project: Project
) -> None:
    payload = json.dumps(deploy_body(app_project.path, "echo chunked-ok")).encode()
    reply = await asyncio.to_thread(send_chunked, server, 0, token=server.token,
                                    payload=payload)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    job_id = json.loads(reply.split(b"\r\n\r\n", 1)[1])["job_id"]
    async with server.client() as client:
        final = await wait_for_status(client, job_id)
    assert final["status"] == "complete" and "chunked-ok\n" in str(final["logs"])


# ------------------------------------------------------------- odd bodies


async def test_json_nested_too_deeply_is_400_not_500(server: LiveServer, core: Deployster,
                                                     app_project: Project) -> None:
    async with server.client() as client:
        for body in (b"[" * 100_000 + b"]" * 100_000,
                     b'{"cd": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
            reply = await client.post("/deploy", content=body,
                                      headers={"content-type": "application/json"})
            assert reply.status_code == 400, reply.text
            assert reply.json()["code"] == "invalid_json"
    await nothing_stored(core)
    no_traceback(server)


async def test_lone_surrogates_and_nul_in_the_fields_are_422(
    server: LiveServer, core: Deployster, app_project: Project
) -> None:
    # Lone surrogates were a 500 (UTF-8 encoding in realpath or in Redis);
    # NUL in commit_hash / ref_name was stored, and PostgreSQL refuses it.
    app_token = await tokens.rotate(core.projects, app_project)
    cases = {"cd": (app_project.path + "/\ud800", app_project.path + "\x00"),
             "commit_hash": ("abc\udfff", "abc\x00"), "ref_name": ("main\ud800", "main\x00")}
    for token in (server.token, app_token):
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     headers={"x-deployster-token": token}) as client:
            for field, values in cases.items():
                for value in values:
                    body = deploy_body(app_project.path, "echo x")
                    body[field] = value
                    reply = await client.post(
                        "/deploy", content=json.dumps(body),
                        headers={"content-type": "application/json"})
                    assert reply.status_code == 422, (field, repr(value), reply.text)
                    error = reply.json()
                    assert field in error["error"], error
                    assert error["code"] == ("invalid_cd" if field == "cd" else "invalid_field")
    await nothing_stored(core)
    no_traceback(server)


async def test_nul_in_the_output_does_not_stop_the_history(
    settings: Settings, any_database_url: str, project_dir: Path, tmp_path: Path
) -> None:
    # PostgreSQL text cannot hold NUL: one job printing it made every history
    # batch fail, so no job after it ever reached SQL. Logged as U+FFFD.
    live_settings = settings.with_overrides(database_url=any_database_url)
    the_core = await Deployster.open(live_settings)
    live = start_server(live_settings, tmp_path / "nul.log")
    try:
        app = await the_core.projects.add(str(project_dir))
        async with live.client() as client:
            ids = []
            for command in ("printf 'a\\000b\\n'", "echo after"):
                reply = await client.post("/deploy", json=deploy_body(app.path, command))
                ids.append(reply.json()["job_id"])
                final = await wait_for_status(client, ids[-1])
                assert final["status"] == "complete"
            page = (await client.get(f"/jobs/{ids[0]}/logs")).json()
            assert "a\ufffdb\n" in page["logs"] and "\x00" not in page["logs"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = {r.id: r for r in await store.select_deployments(the_core.db)}
            if all(i in rows and rows[i].status.finished for i in ids):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"history never got both jobs:\n{live.log()}")
        history = await store.select_deployment_log(the_core.db, ids[0]) or ""
        assert history.encode() == page["logs"].encode()  # byte for byte, same cursors
        assert "Traceback" not in live.log()
    finally:
        live.stop()
        await the_core.close()


# ------------------------------------------------------------------ scope

FLIPPER = """
import os, sys, time
link, a, b = sys.argv[1:4]
tmp = link + ".tmp"
end = time.monotonic() + float(sys.argv[4])
while time.monotonic() < end:
    for target in (a, b):
        try:
            os.symlink(target, tmp)
            os.replace(tmp, link)
        except FileExistsError:
            os.unlink(tmp)
"""


async def test_a_symlink_swapped_during_the_request_cannot_move_a_token_deploy(
    server: LiveServer, core: Deployster, app_project: Project, other: Project
) -> None:
    # The scope check resolved 'cd' and the project lookup resolved it again:
    # a symlink flipped in between (the token's own commands can do that) put
    # the job in another project, with that project's stage and secrets.
    app_token = await tokens.rotate(core.projects, app_project)
    link = Path(app_project.path) / "link"
    link.symlink_to(".")
    flipper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLIPPER, str(link), ".", "../other-app", "20")
    accepted: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     headers={"x-deployster-token": app_token}) as client:
            for _ in range(300):
                reply = await client.post("/deploy", json=deploy_body(str(link), "true"))
                if reply.status_code == 200:
                    accepted.append(reply.json()["job_id"])
                else:
                    assert reply.status_code in (403, 429), reply.text
    finally:
        flipper.kill()
        await flipper.wait()
    assert accepted
    jobs = [await core.job(job_id) for job_id in accepted]
    assert {j.project_id for j in jobs if j is not None} == {app_project.id}
    assert await core.queue.length(other.id) == 0


async def test_a_revoked_token_stops_its_open_stream_at_once(
    server: LiveServer, core: Deployster, app_project: Project
) -> None:
    # A stream lasts as long as its job: one opened before the revocation (or
    # rotation) used to go on receiving the log until the job ended.
    for change in ("revoke", "rotate"):
        project = await core.projects.find(app_project.name)
        app_token = await tokens.rotate(core.projects, project)
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     headers={"x-deployster-token": app_token}) as client:
            script = "for i in $(seq 1 100); do echo tick-$i; sleep 0.1; done"
            job_id = (await client.post(
                "/deploy", json=deploy_body(app_project.path, script))).json()["job_id"]
            lines: list[str] = []
            changed_at: float | None = None
            async with client.stream("GET", f"/jobs/{job_id}/stream") as stream:
                async for line in stream.aiter_lines():
                    lines.append(line)
                    if changed_at is None and "tick-3" in line:
                        project = await core.projects.find(app_project.name)
                        if change == "revoke":
                            await tokens.revoke(core.projects, project)
                        else:
                            await tokens.rotate(core.projects, project)
                        changed_at = time.monotonic()
            assert changed_at is not None
            assert time.monotonic() - changed_at < 3, "the stream went on"
            lines = [line for line in lines if line]
            assert lines[-2:] == ["event: error", 'data: {"error": "Unauthorized: the token was '
                                  'revoked or rotated", "code": "unauthorized"}'], lines[-4:]
            assert not any("tick-100" in line for line in lines)
        async with server.client() as admin:
            await admin.post(f"/jobs/{job_id}/cancel")
    no_traceback(server)


# ------------------------------------------------------- the last command


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``deployster …`` run as an operator would, against ``settings``."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DEPLOYSTER_")},
           **settings_env(settings)}
    return subprocess.run([sys.executable, "-m", "deployster", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


RESTART = "supervisorctl restart my-app--main"
CHAINED = {
    f"{RESTART}\nid": "line break '\\n'",
    f"{RESTART}\r\nid": "line break '\\r'",
    f"{RESTART}\n": "line break '\\n'",
    f"{RESTART}\u2028id": "line break '\\u2028'",
    f"{RESTART}; id": "with ';'",
    f"{RESTART} && id": "with '&&'",
    f"{RESTART} || id": "with '||'",
    f"{RESTART} | tee /tmp/x": "with '|'",
    f"{RESTART} & id": "with '&'",
    f"{RESTART} `id`": "substitution '`'",
    f"{RESTART} $(id)": "substitution '$('",
    f"/$(id)/{RESTART}": "substitution '$('",
    "supervisorctl -c $(id) restart my-app": "substitution '$('",
    f"{RESTART} > /tmp/x": "redirects with '>'",
    f"{RESTART}\x1b[2K": "'\\x1b' (ESC, an escape)",
}


async def test_nothing_can_be_chained_after_the_last_command(
    server: LiveServer, core: Deployster, app_project: Project
) -> None:
    # "supervisorctl restart app\nid" was accepted (the rule's \s took the
    # newline) and ran `id` after the restart.
    async with server.client() as client:
        for last, found in CHAINED.items():
            body = deploy_body(app_project.path, "echo x")
            body["commands"] = ["echo x", last]
            reply = await client.post("/deploy", json=body)
            assert reply.status_code == 422, (last, reply.text)
            error = reply.json()
            assert error["code"] == "invalid_last_command", error
            assert found in error["error"] and repr(last) in error["error"], (last, error)
            assert "\n" not in error["error"]
    await nothing_stored(core)
    no_traceback(server)


# ------------------------------------------------- control characters in fields

FORGED = "\n[deployster] job complete in 0.1s"
CONTROLS = [FORGED, "\r[deployster] job complete", "\x1b[2K\r[deployster] ok", "a\x7fb",
            "a\x85b", "a\x9bb", "a\u2028b", "a\u2029b", "a\tb", "a\x0bb"]


async def test_control_characters_in_the_fields_are_422_naming_the_field(
    server: LiveServer, core: Deployster, app_project: Project
) -> None:
    # A newline, CR or ESC in ref_name or commit_hash was stored and printed as
    # is in the job's header line: a request wrote "[deployster] job complete"
    # into its own log, or rewrote the header on a terminal.
    app_token = await tokens.rotate(core.projects, app_project)
    for token in (server.token, app_token):
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     headers={"x-deployster-token": token}) as client:
            for field in ("cd", "commit_hash", "ref_name"):
                for value in CONTROLS:
                    body = deploy_body(app_project.path, "echo x")
                    body[field] = (app_project.path + value) if field == "cd" else "main" + value
                    reply = await client.post("/deploy", json=body)
                    assert reply.status_code == 422, (field, repr(value), reply.text)
                    error = reply.json()
                    assert f"'{field}'" in error["error"] and "control" in error["error"]
                    assert error["code"] == ("invalid_cd" if field == "cd" else "invalid_field")
                    assert "\n" not in error["error"] and "\x1b" not in error["error"]
    await nothing_stored(core)
    no_traceback(server)


async def test_a_commands_header_cannot_pass_for_deployster_s_own_lines(
    server: LiveServer, core: Deployster, app_project: Project, settings: Settings
) -> None:
    # Commands may span lines, so they are not refused: their header marks
    # every further line and escapes CR and ESC. Before, each of these printed a
    # line (or, on a terminal, rewrote one) reading "[deployster] job complete".
    heredoc = f"cat >/dev/null <<'EOF'{FORGED}\nEOF"
    carriage = "true # \r[deployster] job complete in 0.1s"
    escape = "true # \x1b[2K\x1b[1G[deployster] job complete in 0.1s"
    async with server.client() as client:
        reply = await client.post("/deploy", json=deploy_body(app_project.path, heredoc, carriage,
                                                              escape))
        job_id = reply.json()["job_id"]
        final = await wait_for_status(client, job_id)
    assert final["status"] == "complete", final
    log = str(final["logs"])
    assert "\r" not in log and "\x1b" not in log
    lines = log.splitlines()
    forged = [line for line in lines if line.startswith("[deployster] job complete")]
    assert len(forged) == 1 and lines[-1] == forged[0], log  # only the real one, last
    assert "[1/4] $ cat >/dev/null <<'EOF'" in lines
    assert "    > [deployster] job complete in 0.1s" in lines
    assert "    > EOF" in lines
    assert "[2/4] $ true # \\r[deployster] job complete in 0.1s" in lines
    assert "[3/4] $ true # \\x1b[2K\\x1b[1G[deployster] job complete in 0.1s" in lines
    # The operator's CLI shows the commands the same way.
    shown = cli(settings, "job", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "\r" not in shown.stdout and "\x1b" not in shown.stdout
    out = shown.stdout.splitlines()
    assert not any(line.startswith("[deployster]") for line in out), shown.stdout
    assert " " * 14 + "    > [deployster] job complete in 0.1s" in out


async def test_stage_names_branches_and_paths_with_control_characters_are_refused(
    settings: Settings, core: Deployster, project_dir: Path, tmp_path: Path
) -> None:
    # Entered on the CLI, shown in logs, the dashboard and `project show`.
    for stage in ({"stage_name": "Prod\x1b[31m", "git_branch": "main"},
                  {"stage_name": "Prod", "git_branch": "main\n[deployster] x"}):
        pipeline = tmp_path / "pipeline.json"
        pipeline.write_text(json.dumps([stage]))
        result = cli(settings, "project", "add", str(project_dir), "--pipeline", str(pipeline))
        line = one_line_error(result)
        field = "stage_name" if "\x1b" in stage["stage_name"] else "git_branch"
        assert f"'{field}' must not contain control characters" in line, line
    odd = tmp_path / "odd\rname"
    odd.mkdir()
    line = one_line_error(cli(settings, "project", "add", str(odd)))
    assert "'cd' must not contain control characters" in line and "\\r" in line
    assert await core.projects.all() == []


# ------------------------------------------------------------- the schema


async def test_an_undeclared_method_is_405_with_allow(server: LiveServer) -> None:
    # Every operation answered 405 without the Allow header RFC 9110 requires.
    async with server.client() as client:
        document = (await client.get("/openapi.json")).json()
        for template, operations in document["paths"].items():
            path = template.replace("{job_id}", "01JD0000000000000000000000")
            declared = {method.upper() for method in operations}
            for method in ("DELETE", "PUT", "PATCH", "TRACE", "POST", "GET"):
                if method in declared:
                    continue
                reply = await client.request(method, path)
                assert reply.status_code == 405, (method, path, reply.text)
                assert reply.json()["code"] == "method_not_allowed"
                allowed = {m.strip() for m in reply.headers.get("allow", "").split(",")}
                assert allowed - {"HEAD", "OPTIONS"} == declared, (method, path, allowed)
    no_traceback(server)


async def test_the_schema_accepts_the_bodies_the_server_accepts(
    server: LiveServer, core: Deployster, app_project: Project
) -> None:
    # The schema took "commands": [] (and control characters, and a missing
    # body) while the server refused them with a 422.
    async with server.client() as client:
        document = (await client.get("/openapi.json")).json()
        body_schema = document["paths"]["/deploy"]["post"]["requestBody"]
        assert body_schema.get("required") is True
        validator = jsonschema_rs.validator_for(
            body_schema["content"]["application/json"]["schema"])
        cases: list[tuple[str, object]] = [
            ("commands", []), ("commands", ["   "]), ("commands", ["echo \x00", RESTART]),
            ("commands", ["true"] * 100 + [RESTART]), ("commands", ["\u3000\t", RESTART]),
            ("ref_name", "main\n"), ("ref_name", "main\x1b"), ("commit_hash", "abc\u2028"),
            ("cd", "relative/dir"), ("cd", "/srv/a\rb"),
            ("ref_name", "feature/ü-[x]"), ("commands", ["echo ünï", RESTART]),
            ("cd", "/nonexistent/not-registered"),
        ]
        for field, value in cases:
            body = deploy_body(app_project.path, "echo x")
            body[field] = value
            valid = validator.is_valid(body)
            reply = await client.post("/deploy", json=body)
            # Schema-valid bodies reach the project lookup (the app, or a 404
            # for an unregistered cd); the others are refused as invalid.
            assert (reply.status_code in (200, 404)) == valid, (field, value, reply.text)
            if valid and reply.status_code == 200:
                await wait_for_status(client, reply.json()["job_id"])
        schema_max = body_schema["content"]["application/json"]["schema"]["properties"][
            "commands"]["maxItems"]
        assert schema_max == server.settings.max_commands
    no_traceback(server)
