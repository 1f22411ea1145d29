"""The CI client, ``deployster deploy`` (README.md#github-actions-deployster-deploy).

The SSE parser and the resume logic are unit-tested; everything else runs the
client as a real subprocess against ``deployster serve`` over real HTTP: exit 0
complete, 1 failed, 2 usage/connection/HTTP error, 130 detached by Ctrl-C (the
job is never cancelled by the client).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deployster import client
from deployster.client import ClientError, DeployClient, SSEParser, log_text, sse_lines
from deployster.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.cli import one_line_error
from tests.helpers.paths import REPO
from tests.helpers.server import LiveServer, free_port, register, start_server

RESTART = "supervisorctl restart my-app--main"
README = (REPO / "README.md").read_text()


# ------------------------------------------------------------- SSE parser


def test_sse_parser_events_comments_multiline_data_and_ids() -> None:
    parser = SSEParser()
    events = parser.feed_text(
        ": keep-alive\n"
        "\n"
        "event: log\nid: 12\ndata: {\"text\": \"a\\n\"}\n\n"
        "event: status\r\ndata: {\"status\": \"queued\",\r\ndata:  \"position\": 2}\r\n\r\n"
        "data:no-space\n\n"
        "retry: 1500\n"
        "event: end\ndata: {}\n"
    )
    assert [(e.event, e.data, e.id) for e in events] == [
        ("log", '{"text": "a\\n"}', "12"),
        ("status", '{"status": "queued",\n "position": 2}', None),
        ("message", "no-space", None),
    ]
    assert events[1].json() == {"status": "queued", "position": 2}
    assert parser.last_event_id == "12"  # the id to resume from outlives its event
    assert parser.retry == 1.5
    assert parser.feed("") is not None  # the last event is only complete at its blank line


def test_log_text_accepts_json_objects_json_strings_and_raw_data() -> None:
    parser = SSEParser()
    a, b, c = parser.feed_text(
        'event: log\ndata: {"text": "x\\ty\\n"}\n\n'
        'event: log\ndata: "plain\\n"\n\n'
        "event: log\ndata: raw line\n\n"
    )
    assert (log_text(a), log_text(b), log_text(c)) == ("x\ty\n", "plain\n", "raw line")


class ScriptedServer:
    """A real HTTP server on a port that answers each connection with the next
    scripted reply, then closes it: ``bytes`` are sent as they are, ``RESET``
    after them resets the connection (an RST, as a dying proxy sends)."""

    RESET = b"<reset>"

    def __init__(self, replies: list[bytes], tls: ssl.SSLContext | None = None) -> None:
        self.replies = replies
        self.requests: list[dict[str, str]] = []
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for reply in self.replies:
            conn, _ = self.sock.accept()
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.close()  # the client refused our certificate: next reply
                    continue
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:])}
                self.requests.append({"request": lines[0], **headers})
                reset = reply.endswith(self.RESET)
                conn.sendall(reply[:-len(self.RESET)] if reset else reply)
                if reset:
                    time.sleep(0.05)  # the bytes go out first
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


def sse_reply(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"connection: close\r\n\r\n" + body)


def test_a_dropped_stream_resumes_from_the_last_event_id() -> None:
    """The connection breaks mid-event (closed, then reset); each retry sends
    Last-Event-ID, and what was half received is never taken for an event."""
    server = ScriptedServer([
        sse_reply(b'event: status\ndata: {"status": "running"}\n\n'
                  b'event: log\nid: 6\ndata: {"text": "one\\n"}\n\nevent: log\nid: 1'),
        sse_reply(b""),  # connected, then closed at once
        sse_reply(b'event: log\nid: 9\ndata: {"text": "lost') + ScriptedServer.RESET,
        sse_reply(b'event: status\ndata: {"status": "running"}\n\n'
                  b'event: log\nid: 12\ndata: {"text": "two\\n"}\n\n'
                  b'event: end\ndata: {"status": "complete"}\n\n'),
    ])
    try:
        with DeployClient(server.url, "t0k3n", max_backoff=0.01) as client:
            events = list(client.events("J1"))
    finally:
        server.close()
    assert [r["request"] for r in server.requests] == ["GET /jobs/J1/stream HTTP/1.1"] * 4
    assert [r.get("last-event-id") for r in server.requests] == [None, "6", "6", "6"]
    assert all(r["x-deployster-token"] == "t0k3n" for r in server.requests)
    assert [log_text(e) for e in events if e.event == "log"] == ["one\n", "two\n"]
    assert [e.event for e in events] == ["status", "log", "status", "log", "end"]


def test_a_server_that_stays_away_is_a_clear_error_after_a_bounded_time() -> None:
    notes: list[str] = []
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with DeployClient(url, "t", retry_for=0.5, max_backoff=0.05,
                      notify=notes.append) as client:
        with pytest.raises(ClientError, match=r"gave up reconnecting after \d+s "
                                              r"\(--retry-for 0.5\).*--follow J1"):
            list(client.events("J1"))
    assert 0.5 <= time.monotonic() - started < 3
    assert notes == ["lost the stream of job J1 (Connection refused "
                     "(ConnectionRefusedError)); reconnecting for up to 0.5s"]


def test_the_client_goes_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY: the request goes to the proxy with the whole URL; HTTPS_PROXY:
    a CONNECT with the proxy's credentials; NO_PROXY: straight to the server."""
    job = b'{"job_id": "J1", "status": "running"}'
    proxy = ScriptedServer([
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(job)).encode() + b"\r\n\r\n" + job,
        b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n",
    ])
    host = proxy.url.removeprefix("http://")
    monkeypatch.setenv("HTTP_PROXY", f"http://{host}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://u:p%40ss@{host}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        with DeployClient("http://deployster.invalid:3259/pre", "t", retry_for=0) as plain:
            assert plain.job("J1")["status"] == "running"
        with DeployClient("https://deployster.invalid", "t", retry_for=0) as tls:
            with pytest.raises(ClientError, match=r"cannot reach.*407"):
                tls.job("J1")
    finally:
        proxy.close()
    first, second = proxy.requests
    assert first["request"] == "GET http://deployster.invalid:3259/pre/jobs/J1 HTTP/1.1"
    assert first["x-deployster-token"] == "t"
    assert second["request"].startswith("CONNECT deployster.invalid:443 HTTP/1.")
    assert second["proxy-authorization"] == "Basic dTpwQHNz"  # u:p@ss
    assert "x-deployster-token" not in second  # the token only ever goes inside TLS

    monkeypatch.setenv("NO_PROXY", "deployster.invalid")
    with DeployClient("http://deployster.invalid:3259", "t", retry_for=0) as direct:
        with pytest.raises(ClientError, match="cannot reach the deployster server"):
            direct.job("J1")  # no proxy: the name does not resolve


def test_https_checks_the_certificate_and_trusts_ssl_cert_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate the system does not trust is a clear error (never silently
    accepted); named in SSL_CERT_FILE (a private CA), it is trusted."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    job = b'{"job_id": "J1", "status": "complete"}'
    server = ScriptedServer([
        b"", b"", b"",  # the first clients hang up in the handshake
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(job)).encode() + b"\r\n\r\n" + job,
    ], tls=context)
    for name in ("HTTPS_PROXY", "https_proxy", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    try:
        # Final at once, whatever --retry-for says: it would not get better.
        started = time.monotonic()
        with DeployClient(server.url, "t", retry_for=60) as untrusted:
            with pytest.raises(ClientError, match="TLS certificate not trusted"):
                untrusted.job("J1")
            with pytest.raises(ClientError, match="TLS certificate not trusted"):
                untrusted.submit("/x", [RESTART], "abc", "main")
            with pytest.raises(ClientError, match="TLS certificate not trusted"):
                list(untrusted.events("J1"))
        assert time.monotonic() - started < 20
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with DeployClient(server.url, "t", retry_for=0) as trusted:
            assert trusted.job("J1")["status"] == "complete"
    finally:
        server.close()
    assert server.requests[-1]["x-deployster-token"] == "t"


def test_sse_lines_split_on_cr_and_lf_only() -> None:
    """U+2028, U+0085 and friends stay inside a line (JSON leaves them raw);
    CR, LF and CRLF end one, even split across chunks."""
    chunks = [b'data: {"text": "a\xe2\x80\xa8b\xc2\x85c\x0cd"}\r', b"\n",
              b"event: x\r", b"data: y\rdata: z", b"\n\n"]
    assert list(sse_lines(iter(chunks))) == [
        'data: {"text": "a\u2028b\x85c\x0cd"}', "event: x", "data: y", "data: z", ""]


# --------------------------------------------------------------- helpers


@pytest.fixture
async def registered(core: Deployster, project_dir: Path) -> Path:
    await core.projects.add(str(project_dir))
    return project_dir


def client_env(server: LiveServer, **extra: str) -> dict[str, str]:
    """The environment of a CI step: server and token in the environment, nothing
    inherited that could point elsewhere."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("DEPLOYSTER_", "GITHUB_"))}
    return {**inherited, "DEPLOYSTER_URL": server.url, "DEPLOYSTER_TOKEN": server.token,
            **extra}


def deploy_args(cd: Path | str, *commands: str) -> list[str]:
    return ["deploy", "--cd", str(cd), "--commit", "abc1234", "--ref", "main", "--", *commands]


def run_cli(env: dict[str, str], *args: str, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployster", *args], env=env, cwd=cwd or REPO,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def run_cli_bytes(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """``run_cli`` with stdout and stderr as bytes, as written."""
    return subprocess.run(
        [sys.executable, "-m", "deployster", *args], env=env, cwd=cwd,
        capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )


def default_signals() -> None:
    """In the child: SIGINT and SIGTERM as a shell's foreground command gets
    them. The tests send both; a suite started in the background (``pytest &``
    from a script) hands its children an ignored SIGINT, and Python then never
    turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Running:
    """A client process whose stdout and stderr are read as they come."""

    def __init__(self, env: dict[str, str], *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deployster", *args], env=env, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, preexec_fn=default_signals,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(s, d), daemon=True)
                         for s, d in ((self.process.stdout, self.out),
                                      (self.process.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    def wait_for(self, lines: list[str], text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                if text in line:
                    return line
            if self.process.poll() is not None and all(not t.is_alive() for t in self._threads):
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not seen; stdout={self.out!r} stderr={self.err!r}")

    def finish(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        for t in self._threads:
            t.join(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        r.kill()


def job(server: LiveServer, job_id: str) -> dict[str, object]:
    reply = httpx.get(f"{server.url}/jobs/{job_id}", headers=server.headers, timeout=10)
    assert reply.status_code == 200, reply.text
    value = reply.json()
    assert isinstance(value, dict)
    return value


def wait_finished(server: LiveServer, job_id: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = job(server, job_id)
        if record["status"] in ("complete", "failed"):
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def full_log(server: LiveServer, job_id: str) -> str:
    """The job's whole log through ``GET /jobs/<id>/logs``, page after page."""
    parts, cursor = [], 0
    while True:
        reply = httpx.get(f"{server.url}/jobs/{job_id}/logs", params={"from": cursor},
                          headers=server.headers, timeout=30)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        parts.append(str(page["logs"]))
        if page["next"] == cursor:
            return "".join(parts)
        cursor = page["next"]


def job_id_of(stderr: str) -> str:
    found = re.search(r"job (\S+) (?:started|queued|running|complete|failed)", stderr)
    assert found, stderr
    return found.group(1)


def gate_command(gate: Path, message: str = "waiting for the gate") -> str:
    return f"echo {message}; while [ ! -e {gate} ]; do sleep 0.05; done; echo gate-open"


def detach_gated(env: dict[str, str], cd: Path, gate: Path, *, cwd: Path) -> str:
    """Start a job that holds the project's lock until ``gate`` exists; its id."""
    first = run_cli(env, "deploy", "--detach",
                    *deploy_args(cd, gate_command(gate), RESTART)[1:], cwd=cwd)
    assert first.returncode == 0, first.stderr
    return first.stdout.strip()


# ------------------------------------------------------------- outcomes


async def test_a_complete_deploy_streams_the_exact_log_and_exits_0(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    result = run_cli(client_env(server), *deploy_args(registered, "echo hello", "printf 'no "
                     "newline'", RESTART), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job_id = job_id_of(result.stderr)
    assert "hello\n" in result.stdout and "supervisorctl: restart my-app--main" in result.stdout
    # The log on stdout is the job's log, byte for byte (a trailing newline aside,
    # added when the log's last line has none so the summary starts a line).
    log = full_log(server, job_id)
    assert result.stdout in (log, log + "\n")
    assert f"deployster: job {job_id} started" in result.stderr
    assert re.search(rf"deployster: job {job_id} complete in \d", result.stderr)
    assert server.token not in result.stdout + result.stderr


async def test_a_failing_command_exits_1_with_the_reason(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    result = run_cli(client_env(server), *deploy_args(registered, "echo before; exit 3",
                                                      RESTART), cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "before\n" in result.stdout
    job_id = job_id_of(result.stderr)
    summary = result.stderr.splitlines()[-1]
    assert summary.startswith(f"deployster: job {job_id} failed: command_failed")
    assert "exit code 3" in summary
    assert job(server, job_id)["status"] == "failed"


async def test_the_servers_422_is_exit_2_with_its_message(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    result = run_cli(client_env(server), *deploy_args(registered, "echo hi"), cwd=tmp_path)
    line = one_line_error(result)
    assert "422" in line and "supervisorctl" in line
    assert result.stdout == ""


async def test_a_wrong_token_is_exit_2_token_rejected_and_never_printed(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    env = client_env(server, DEPLOYSTER_TOKEN="wrong-secret-token")
    result = run_cli(env, *deploy_args(registered, RESTART), cwd=tmp_path)
    line = one_line_error(result)
    assert "token rejected" in line and "wrong-secret-token" not in line


def test_an_unreachable_server_is_exit_2_at_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYSTER_", "GITHUB_"))}
    env |= {"DEPLOYSTER_URL": f"http://127.0.0.1:{free_port()}", "DEPLOYSTER_TOKEN": "x",
            "DEPLOYSTER_RETRY_FOR": "0"}
    started = time.monotonic()
    # --cd is a path on the server: /srv/app need not exist here.
    result = run_cli(env, *deploy_args("/srv/app", RESTART), cwd=tmp_path, timeout=30)
    line = one_line_error(result)
    assert "cannot reach the deployster server at http://127.0.0.1:" in line
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(("args", "message"), [
    (["deploy", "--commit", "a", "--ref", "main", "--", RESTART], "--cd DIR is required"),
    (["deploy", "--cd", "/srv/app", "--commit", "a", "--ref", "main"], "no commands"),
    (["deploy", "--url", "ftp://x", "--cd", "/srv/app", "--commit", "a", "--ref", "main", "--",
      RESTART], "is not an http:// or https:// address"),
    (["deploy", "--cd", "/srv/app", "--ref", "main", "--", RESTART], "no commit"),
    (["deploy", "--cd", "/srv/app", "--commit", "a", "--", RESTART], "no branch"),
    (["deploy", "--url", "localhost:3259", "--cd", "/x", "--", RESTART], "must start with http"),
    (["deploy", "--url", "http://", "--cd", "/x", "--", RESTART], "it has no host"),
    (["deploy", "--url", "http://h:99999", "--cd", "/x", "--", RESTART], "port is out of range"),
    (["deploy", "--url", "http://u:secret@h:x/", "--cd", "/x", "--", RESTART],
     "(not shown: it holds a user:password)"),
    (["deploy", "--timeout", "-1", "--cd", "/x", "--", RESTART], "must be a positive number"),
    (["deploy", "--timeout", "soon", "--cd", "/x", "--", RESTART], "'soon' is not a number"),
    (["deploy", "--timeout", "nan", "--cd", "/x", "--", RESTART], "must be a positive number"),
    (["deploy", "--retry-for", "-3", "--cd", "/x", "--", RESTART], "non-negative number"),
    (["deploy", "--cd", "/x", "--commit", "a", "--ref", "main", "--", "", RESTART],
     "command 1 of 2 is empty"),
    (["deploy", "--cd", "/x", "--commit", "a", "--ref", "main", "--", "echo", "  "],
     "command 2 of 2 is empty"),
    (["deploy", "--cd", "  ", "--commit", "a", "--ref", "main", "--", RESTART],
     "--cd DIR is required"),
    (["deploy", "echo hi", "--cd", "/x", RESTART], "put the commands after '--'"),
    (["deploy", "--cd", "/x", "--nope", "--", RESTART], "unrecognized arguments: --nope"),
])
def test_usage_errors_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYSTER_", "GITHUB_"))}
    env |= {"DEPLOYSTER_URL": f"http://127.0.0.1:{free_port()}", "DEPLOYSTER_TOKEN": "x"}
    # tmp_path is no git checkout, so nothing can fill in the commit or the branch
    assert message in one_line_error(run_cli(env, *args, cwd=tmp_path))


def test_a_missing_token_is_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYSTER_", "GITHUB_"))}
    result = run_cli(env, *deploy_args("/srv/app", RESTART), cwd=tmp_path)
    assert "no token: set DEPLOYSTER_TOKEN" in one_line_error(result)
    result = run_cli(env | {"DEPLOYSTER_TOKEN": " \n"}, *deploy_args("/srv/app", RESTART),
                     cwd=tmp_path)
    assert "no token: set DEPLOYSTER_TOKEN" in one_line_error(result)


@pytest.mark.parametrize("token", ["two\nlines", "with space", "caf\u00e9"])
def test_a_token_that_cannot_be_a_header_is_one_line_and_never_shown(
    tmp_path: Path, token: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYSTER_", "GITHUB_"))}
    env |= {"DEPLOYSTER_URL": f"http://127.0.0.1:{free_port()}", "DEPLOYSTER_TOKEN": token}
    line = one_line_error(run_cli(env, *deploy_args("/srv/app", RESTART), cwd=tmp_path))
    assert "the token contains spaces, line breaks or non-ASCII" in line
    assert token not in line


async def test_a_ci_secret_with_a_trailing_newline_and_a_url_with_a_slash_work(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    env = client_env(server, DEPLOYSTER_TOKEN=f"{server.token}\r\n",
                     DEPLOYSTER_URL=f" {server.url}/\n")
    result = run_cli(env, *deploy_args(registered, "echo ok", RESTART), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\nok\n" in result.stdout


def test_help_lists_the_environment_and_the_exit_codes(tmp_path: Path) -> None:
    result = run_cli(dict(os.environ), "deploy", "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    for needle in ("DEPLOYSTER_URL", "DEPLOYSTER_TOKEN", "DEPLOYSTER_RETRY_FOR", "GITHUB_SHA",
                   "GITHUB_REF_NAME", "--retry-for", "--follow JOB_ID"):
        assert needle in text, needle
    codes = text[text.index("exit codes:"):]
    for code in ("0 ", "1 ", "2 ", "130 ", "143 "):
        assert f"\n  {code}" in codes, code


# --------------------------------------------------------- queue, detach


async def test_a_queued_deploy_shows_its_position_then_streams_and_exits_0(
    server: LiveServer, registered: Path, tmp_path: Path, running: list[Running]
) -> None:
    gate = tmp_path / "gate"
    env = client_env(server)
    first_id = detach_gated(env, registered, gate, cwd=tmp_path)

    second = Running(env, *deploy_args(registered, "echo second", RESTART), cwd=tmp_path)
    running.append(second)
    queued = second.wait_for(second.err, "queued")
    assert "Another deployment is running" in queued
    waiting = second.wait_for(second.err, "waiting: position 1 in the queue")
    assert "starts in" not in waiting  # no history: no guess
    gate.touch()
    assert second.finish() == 0, (second.out, second.err)
    stdout = "".join(second.out)
    assert "second\n" in stdout and "gate-open" not in stdout
    assert wait_finished(server, first_id)["status"] == "complete"


async def test_a_queued_deploy_says_about_when_it_starts_once_there_is_history(
    server: LiveServer, registered: Path, tmp_path: Path, running: list[Running]
) -> None:
    env = client_env(server)
    done = run_cli(env, *deploy_args(registered, "sleep 1", RESTART), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    gate = tmp_path / "gate"
    detach_gated(env, registered, gate, cwd=tmp_path)
    second = Running(env, *deploy_args(registered, "echo second", RESTART), cwd=tmp_path)
    running.append(second)
    waiting = second.wait_for(second.err, "waiting: position 1 in the queue")
    # One run of about a second so far: it starts within about a second.
    assert re.search(r"position 1 in the queue, starts in (any moment|about [1-3]s)$", waiting), \
        waiting
    gate.touch()
    assert second.finish() == 0, (second.out, second.err)


@pytest.mark.parametrize(("seconds", "said"), [
    (0, "any moment"), (0.6, "any moment"), (1.4, "about 1s"), (89, "about 89s"),
    (90, "about 2 min"), (59 * 60, "about 59 min"), (60 * 60, "about 1 h 0 min"),
    (100 * 60, "about 1 h 40 min"),
])
def test_a_wait_is_said_as_roughly_as_it_is_known(seconds: float, said: str) -> None:
    assert client.about(seconds) == said


async def test_detach_prints_the_job_id_at_once_and_the_job_still_completes(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    result = run_cli(client_env(server), "deploy", "--detach",
                     *deploy_args(registered, gate_command(gate), RESTART)[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert re.fullmatch(r"[0-9A-Z]{26}", job_id), result.stdout
    assert job(server, job_id)["status"] in ("queued", "running")
    assert "not waiting (--detach)" in result.stderr
    gate.touch()
    assert wait_finished(server, job_id)["status"] == "complete"

    # --follow attaches to it afterwards: the whole log and its exit code.
    follow = run_cli(client_env(server), "deploy", "--follow", job_id, cwd=tmp_path)
    assert follow.returncode == 0, follow.stderr
    assert "gate-open\n" in follow.stdout


async def test_ctrl_c_detaches_with_130_and_does_not_cancel_the_job(
    server: LiveServer, registered: Path, tmp_path: Path, running: list[Running]
) -> None:
    gate = tmp_path / "gate"
    client = Running(client_env(server), *deploy_args(registered, gate_command(gate, "mid-job"),
                                                      RESTART), cwd=tmp_path)
    running.append(client)
    client.wait_for(client.out, "mid-job")  # streaming
    job_id = job_id_of("".join(client.err))
    client.process.send_signal(signal.SIGINT)
    assert client.finish() == 130
    err = "".join(client.err)
    assert "Traceback" not in err
    assert f"detached: job {job_id} keeps running" in err
    assert f"deployster deploy --follow {job_id}" in err
    assert job(server, job_id)["status"] == "running"
    gate.touch()
    record = wait_finished(server, job_id)
    assert record["status"] == "complete", record


async def test_timeout_gives_up_with_2_and_leaves_the_job_running(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    started = time.monotonic()
    result = run_cli(client_env(server), "deploy", "--timeout", "1.5",
                     *deploy_args(registered, gate_command(gate), RESTART)[1:], cwd=tmp_path)
    assert time.monotonic() - started < 20
    assert result.returncode == 2, result.stderr
    assert "gave up waiting for job" in result.stderr and "not cancelled" in result.stderr
    job_id = job_id_of(result.stderr)
    assert job(server, job_id)["status"] == "running"
    gate.touch()
    assert wait_finished(server, job_id)["status"] == "complete"


# ------------------------------------------------------ env and git defaults


async def test_url_token_sha_and_branch_come_from_the_ci_environment(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    env = client_env(server, GITHUB_SHA="f00dfeed" * 5, GITHUB_REF_NAME="release/1.2")
    result = run_cli(env, "deploy", "--cd", str(registered), "--", RESTART, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = job(server, job_id_of(result.stderr))
    assert record["commit_hash"] == "f00dfeed" * 5 and record["ref_name"] == "release/1.2"


async def test_sha_and_branch_default_to_the_git_checkout(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    checkout = tmp_path / "checkout"
    head = make_git_checkout(checkout, "feature-x")
    result = run_cli(client_env(server), "deploy", "--cd", str(registered), "--", RESTART,
                     cwd=checkout)
    assert result.returncode == 0, result.stderr
    record = job(server, job_id_of(result.stderr))
    assert record["commit_hash"] == head and record["ref_name"] == "feature-x"


def make_git_checkout(path: Path, branch: str) -> str:
    """A fresh repository on ``branch`` with one commit; its sha."""
    path.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", branch], cwd=path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=path, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True,
                          capture_output=True, text=True).stdout.strip()


# ------------------------------------------------------ resume, for real


async def test_resuming_from_a_last_event_id_gives_the_rest_of_the_log(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    """Against the real server: the stream read whole, then resumed from a byte
    offset inside the log (the ids are byte offsets) gives exactly the rest."""
    script = "for i in $(seq 1 50); do echo line-$i; done"
    result = run_cli(client_env(server), *deploy_args(registered, script, RESTART),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job_id = job_id_of(result.stderr)
    with DeployClient(server.url, server.token) as client:
        first = list(client.events(job_id))
        whole = "".join(log_text(e) for e in first if e.event == "log")
        assert whole == result.stdout == full_log(server, job_id)
        assert first[-1].event == "end" and first[-1].json()["status"] == "complete"
        last_id = [e.id for e in first if e.event == "log"][-1]
        assert last_id == str(len(whole.encode()))
        offset = whole.encode().index(b"line-25\n")
        rest = list(client.events(job_id, last_event_id=str(offset)))
        assert rest[-1].event == "end"
        resumed = "".join(log_text(e) for e in rest if e.event == "log")
        assert resumed.encode() == whole.encode()[offset:]
        at_end = list(client.events(job_id, last_event_id=last_id))
        assert [e.event for e in at_end] == ["end"]


class TcpProxy:
    """A TCP proxy on a free port to the server on ``upstream_port``; each
    accepted connection goes to ``_serve`` on a thread of its own."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _upstream(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.upstream_port))

    @staticmethod
    def _hang_up(*sockets: socket.socket) -> None:
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


class CuttingProxy(TcpProxy):
    """Cuts the first ``cuts`` connections after ``after`` bytes of response: a
    stream dropped mid-way, as a flaky network would."""

    def __init__(self, upstream_port: int, *, after: int, cuts: int = 1) -> None:
        self.after, self.cuts, self.cut = after, cuts, 0
        super().__init__(upstream_port)

    def _serve(self, conn: socket.socket) -> None:
        up = self._upstream()
        threading.Thread(target=self._copy, args=(conn, up, None), daemon=True).start()
        self._copy(up, conn, self.after if self.cut < self.cuts else None)

    def _copy(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(4096)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    # Only a streaming answer is cut; a short reply is let through.
                    if b"text/event-stream" in data or sent:
                        dst.sendall(data[: max(1, limit - sent)])
                        self.cut += 1
                        break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            self._hang_up(src, dst)


async def test_a_stream_cut_mid_way_is_resumed_without_losing_or_repeating_a_byte(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, after=600, cuts=2)
    try:
        script = "for i in $(seq 1 80); do echo line-$i; sleep 0.01; done"
        env = client_env(server, DEPLOYSTER_URL=f"http://127.0.0.1:{proxy.port}")
        result = run_cli(env, *deploy_args(registered, script, RESTART), cwd=tmp_path)
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert proxy.cut >= 1, "the proxy never cut the stream: the test proved nothing"
    assert result.stdout == full_log(server, job_id_of(result.stderr))
    lines = [line for line in result.stdout.splitlines() if line.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 81)]


# ---------------------------------------------------------------- README


def make_git_clone(path: Path, origin: Path) -> None:
    """Make ``path`` (empty) a clone of ``origin`` with one commit pushed."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "--bare", str(origin)], check=True)
    subprocess.run([*git, "clone", "-q", str(origin), str(path)], check=True,
                   capture_output=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "first"], cwd=path, check=True)
    subprocess.run([*git, "push", "-q", "origin", "HEAD"], cwd=path, check=True,
                   capture_output=True)
    subprocess.run([*git, "branch", "-q", "--set-upstream-to", f"origin/{_branch(path)}"],
                   cwd=path, check=True)


def _head(path: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True,
                          capture_output=True, text=True).stdout.strip()


def _branch(path: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=path, check=True,
                          capture_output=True, text=True).stdout.strip()


def run_shell(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-ec", command], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def _ci_client_step() -> dict[str, object]:
    section = README[README.index("### GitHub Actions (deployster deploy)"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block
    assert len(block.group(1).strip().splitlines()) == 3, "the step is three lines"
    steps = yaml.safe_load(block.group(1))
    assert isinstance(steps, list) and len(steps) == 1
    step = steps[0]
    assert isinstance(step, dict)
    return step


async def test_the_readme_github_actions_step_is_valid_yaml_and_works(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    step = _ci_client_step()
    run = step["run"]
    env = step["env"]
    assert isinstance(run, str) and isinstance(env, dict)
    assert env == {"DEPLOYSTER_URL": "${{ secrets.DEPLOYSTER_URL }}",
                   "DEPLOYSTER_TOKEN": "${{ secrets.DEPLOYSTER_TOKEN }}"}
    fetch = re.match(r'curl -fsSL "\$DEPLOYSTER_URL/client" -o deployster.py && '
                     r'python3 deployster.py deploy ', run)
    assert fetch, "the step fetches the client from the server"
    assert "--token" not in run, "the token belongs in the environment, not in ps"
    command = run.replace("/var/www/my-app", str(registered))
    secrets = {"DEPLOYSTER_URL": server.url, "DEPLOYSTER_TOKEN": server.token}
    step_env = {k: re.sub(r"\$\{\{ secrets\.(\w+) \}\}", lambda m: secrets[m.group(1)], v)
                for k, v in env.items()}
    # A runner's python3 with nothing installed: this one started with -I -S
    # sees no site-packages at all, so the served file must need none.
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    (bare / "python3").chmod(0o755)
    # The project dir is a clone of the repository CI built; GitHub sets the
    # commit it built for every step, and the server checks out exactly that.
    make_git_clone(registered, tmp_path / "origin.git")
    built = _head(registered)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYSTER_", "GITHUB_"))}
    base |= {"GITHUB_SHA": built, "GITHUB_REF_NAME": _branch(registered),
             "PATH": f"{bare}{os.pathsep}{os.environ['PATH']}"}
    workdir = tmp_path / "ci"
    workdir.mkdir()
    result = run_shell(command, env={**base, **step_env}, cwd=workdir)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "complete in" in result.stderr.splitlines()[-1]
    assert (workdir / "deployster.py").read_bytes() == Path(client.__file__).read_bytes()


def test_the_server_hands_out_the_client_without_a_token(server: LiveServer) -> None:
    reply = httpx.get(f"{server.url}/client", timeout=10)  # no token header
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/x-python; charset=utf-8"
    assert reply.headers["cache-control"] == "no-cache"
    assert reply.content == Path(client.__file__).read_bytes()


def test_the_standalone_client_reports_mistakes_in_one_line(tmp_path: Path) -> None:
    """Run as a file by a bare python3 (no site-packages): a usage error is one
    line naming how it was run, --help works, and the word 'deploy' is optional."""
    script = tmp_path / "deployster.py"
    script.write_bytes(Path(client.__file__).read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYSTER_", "GITHUB_"))}

    def bare(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-I", "-S", str(script), *args], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)

    helped = bare("deploy", "--help")
    assert helped.returncode == 0
    assert "python3 deployster.py deploy --follow JOB_ID" in helped.stdout
    assert bare("--help").stdout == helped.stdout
    wrong = one_line_error(bare("deploy", "--cd", "/x", "--nope", "--", RESTART))
    assert "unrecognized arguments: --nope" in wrong
    assert "see 'python3 deployster.py deploy --help'" in wrong
    no_token = one_line_error(bare("deploy", "--cd", "/x", "--", RESTART))
    assert "no token: set DEPLOYSTER_TOKEN" in no_token
    down = bare("deploy", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t",
                "--retry-for", "0", "--commit", "abc", "--ref", "main", "--cd", "/x", "--",
                RESTART)
    assert "cannot reach the deployster server" in one_line_error(down)


# ------------------------------------------------- a server that restarts


def port_of(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def test_a_server_killed_mid_job_and_restarted_ends_the_client_with_the_outcome(
    server: LiveServer, registered: Path, tmp_path: Path, running: list[Running],
    settings: Settings,
) -> None:
    """kill -9 of the server while the client streams: the client waits, resumes
    on the restarted server (Last-Event-ID), and recovery's `interrupted` is its
    exit 1, with every byte of the log once."""
    gate = tmp_path / "gate"
    client = Running(client_env(server), *deploy_args(
        registered, "echo one; echo two", gate_command(gate, "mid-job"), RESTART), cwd=tmp_path)
    running.append(client)
    client.wait_for(client.out, "mid-job")
    job_id = job_id_of("".join(client.err))
    server.stop(signal.SIGKILL)
    client.wait_for(client.err, f"lost the stream of job {job_id}")
    await asyncio.sleep(1)  # nothing listens: the client keeps trying
    again = start_server(settings, tmp_path / "server2.log", port=port_of(server))
    try:
        code = client.finish(60)
        err = "".join(client.err)
        assert code == 1, err
        assert "Traceback" not in err
        assert f"reconnected to the stream of job {job_id}" in err
        assert f"deployster: job {job_id} failed: interrupted" in err
        log = full_log(again, job_id)
        assert "".join(client.out) in (log, log + "\n")
        assert "".join(client.out).count("mid-job\n") == 1
    finally:
        gate.touch()
        again.stop()


async def test_a_queued_job_outlives_a_server_restart_and_the_client_sees_it_through(
    server: LiveServer, registered: Path, tmp_path: Path, running: list[Running],
    settings: Settings,
) -> None:
    """SIGTERM to the server while the followed job waits in the queue: the
    running job ends interrupted, the queued one stays in Redis and runs on the
    new server; the client follows it there and exits 0 with exactly its log."""
    gate = tmp_path / "gate"
    env = client_env(server)
    first_id = detach_gated(env, registered, gate, cwd=tmp_path)
    second = Running(env, *deploy_args(registered, "echo second", RESTART), cwd=tmp_path)
    running.append(second)
    second.wait_for(second.err, "waiting: position 1 in the queue")
    server.stop(signal.SIGTERM)
    again = start_server(settings, tmp_path / "server2.log", port=port_of(server))
    try:
        code = second.finish(60)
        err = "".join(second.err)
        assert code == 0, err
        assert "Traceback" not in err
        second_id = job_id_of(err)
        out = "".join(second.out)
        assert out == full_log(again, second_id)
        assert "second\n" in out and "gate-open" not in out
        record = wait_finished(again, first_id)
        assert (record["status"], record["reason"]) == ("failed", "interrupted"), record
    finally:
        gate.touch()
        again.stop()


async def test_a_server_that_does_not_come_back_is_exit_2_after_retry_for(
    server: LiveServer, registered: Path, tmp_path: Path, running: list[Running],
) -> None:
    gate = tmp_path / "gate"
    try:
        client = Running(client_env(server, DEPLOYSTER_RETRY_FOR="2"), *deploy_args(
            registered, gate_command(gate, "mid-job"), RESTART), cwd=tmp_path)
        running.append(client)
        client.wait_for(client.out, "mid-job")
        job_id = job_id_of("".join(client.err))
        server.stop(signal.SIGKILL)
        killed = time.monotonic()
        assert client.finish(30) == 2
        assert 2 <= time.monotonic() - killed < 15
        err = "".join(client.err)
        assert "Traceback" not in err
        last = err.splitlines()[-1]
        assert last.startswith("deployster: error: lost the connection to http://127.0.0.1:")
        assert "(--retry-for 2)" in last and f"deployster deploy --follow {job_id}" in last
    finally:
        gate.touch()  # the orphaned job's shell loop ends


async def test_post_waits_out_a_server_that_is_not_up_yet(
    settings: Settings, registered: Path, tmp_path: Path, running: list[Running],
) -> None:
    """Connection refused: the request never reached a server, so it is retried."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYSTER_", "GITHUB_"))}
    env |= {"DEPLOYSTER_URL": f"http://127.0.0.1:{port}", "DEPLOYSTER_TOKEN": settings.token or ""}
    client = Running(env, *deploy_args(registered, "echo hi", RESTART), cwd=tmp_path)
    running.append(client)
    client.wait_for(client.err, "nothing was queued, retrying POST /deploy in")
    live = start_server(settings, tmp_path / "server.log", port=port)
    try:
        code = client.finish(60)
        err = "".join(client.err)
        assert code == 0, err
        assert "the server took the deploy" in err and "Traceback" not in err
        assert "hi\n" in "".join(client.out)
    finally:
        live.stop()


# ------------------------------------------------------ 503, 429, retries


async def test_503_redis_down_is_retried_after_retry_after_then_deploys(
    settings: Settings, project_dir: Path, tmp_path: Path, own_redis_dir: Path,
    running: list[Running],
) -> None:
    url = ensure_embedded_redis(own_redis_dir)
    outage = settings.with_overrides(redis_url=url)
    await register(outage, project_dir)
    live = start_server(outage, tmp_path / "server.log")
    try:
        stop_embedded_redis(own_redis_dir)
        # Retry-After (5 s) is past --retry-for 3: a clear error at once, nothing queued.
        started = time.monotonic()
        result = run_cli(client_env(live, DEPLOYSTER_RETRY_FOR="3"),
                         *deploy_args(project_dir, "echo hi", RESTART), cwd=tmp_path)
        line = one_line_error(result)
        assert "the server answered 503 while submitting the deploy" in line
        assert "unavailable" in line and "retry after 5s, past --retry-for" in line
        assert time.monotonic() - started < 10

        client = Running(client_env(live, DEPLOYSTER_RETRY_FOR="40"),
                         *deploy_args(project_dir, "echo after-the-outage", RESTART),
                         cwd=tmp_path)
        running.append(client)
        notice = client.wait_for(client.err, "retrying POST /deploy in 5s")
        assert "the server answered 503" in notice and "nothing was queued" in notice
        ensure_embedded_redis(own_redis_dir)
        code = client.finish(60)
        err = "".join(client.err)
        assert code == 0, err
        assert "the server took the deploy" in err
        assert "after-the-outage\n" in "".join(client.out)
    finally:
        live.stop()


async def test_429_queue_full_honours_retry_after_then_deploys_or_gives_up(
    settings: Settings, registered: Path, tmp_path: Path, running: list[Running],
) -> None:
    """DEPLOYSTER_MAX_QUEUE=1, one job running, one waiting: the next POST is 429
    with Retry-After 30. Past --retry-for it is exit 2 with the server's message
    at once; within it the client waits, says so, and deploys."""
    live = start_server(settings, tmp_path / "server.log", extra_env={"DEPLOYSTER_MAX_QUEUE": "1"})
    gate = tmp_path / "gate"
    try:
        env = client_env(live)
        for script in (gate_command(gate), "echo queued"):
            held = run_cli(env, "deploy", "--detach", *deploy_args(registered, script,
                                                                   RESTART)[1:], cwd=tmp_path)
            assert held.returncode == 0, held.stderr
        started = time.monotonic()
        result = run_cli(client_env(live, DEPLOYSTER_RETRY_FOR="5"),
                         *deploy_args(registered, "echo third", RESTART), cwd=tmp_path)
        line = one_line_error(result)
        assert "the server answered 429 while submitting the deploy" in line
        assert "DEPLOYSTER_MAX_QUEUE" in line and "retry after 30s, past --retry-for" in line
        assert time.monotonic() - started < 10

        client = Running(client_env(live), *deploy_args(registered, "echo third", RESTART),
                         cwd=tmp_path)
        running.append(client)
        client.wait_for(client.err, "the server answered 429")
        assert "retrying POST /deploy in 30s" in "".join(client.err)
        gate.touch()  # the queue drains; the retry after 30 s gets in
        code = client.finish(90)
        err = "".join(client.err)
        assert code == 0, err
        assert "third\n" in "".join(client.out)
    finally:
        gate.touch()
        live.stop()


# ------------------------------------------------------------- signals


async def test_sigterm_detaches_with_143_and_does_not_cancel_the_job(
    server: LiveServer, registered: Path, tmp_path: Path, running: list[Running]
) -> None:
    """GitHub Actions cancels a run with SIGINT, then SIGTERM: both detach."""
    gate = tmp_path / "gate"
    client = Running(client_env(server), *deploy_args(registered, gate_command(gate, "mid-job"),
                                                      RESTART), cwd=tmp_path)
    running.append(client)
    client.wait_for(client.out, "mid-job")
    job_id = job_id_of("".join(client.err))
    client.process.send_signal(signal.SIGTERM)
    assert client.finish() == 143
    err = "".join(client.err)
    assert "Traceback" not in err
    assert f"detached: job {job_id} keeps running; follow it with: " \
           f"deployster deploy --follow {job_id}" in err
    assert job(server, job_id)["status"] == "running"
    gate.touch()
    assert wait_finished(server, job_id)["status"] == "complete"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_before_the_server_answered_says_the_deploy_may_be_queued(
    tmp_path: Path, running: list[Running], sig: int, code: int
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    threading.Thread(target=accept, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYSTER_", "GITHUB_"))}
    env |= {"DEPLOYSTER_URL": f"http://127.0.0.1:{listener.getsockname()[1]}",
            "DEPLOYSTER_TOKEN": "x"}
    try:
        client = Running(env, *deploy_args("/srv/app", RESTART), cwd=tmp_path)
        running.append(client)
        deadline = time.monotonic() + 20
        while not held and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        client.process.send_signal(sig)
        assert client.finish(20) == code
        err = "".join(client.err)
        assert "Traceback" not in err
        assert err.strip().splitlines() == [
            "deployster: interrupted while the server was answering POST /deploy: the deploy "
            "may or may not have been queued; look for it in the dashboard or GET /jobs "
            "before deploying again"]
    finally:
        listener.close()
        for conn in held:
            conn.close()


# ------------------------------------------------------- output fidelity


async def test_binary_huge_and_carriage_return_output_reaches_stdout_exactly(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    """Non-UTF-8 bytes (as the server stores them), NUL, U+0085/U+2028 (line
    breaks to str.splitlines), CR progress bars, a 1 MB line, a log of several
    1 MiB pages and output without a final newline: stdout is the job's log."""
    commands = [
        r"printf 'bin:\377\376\000 nel:\302\205 ls:\342\200\250 end\n'",
        r"printf 'progress 10%%\rprogress 50%%\rprogress 100%%\r\n'",
        r"head -c 1000000 /dev/zero | tr '\000' x; echo",
        "yes 'éèà — a multibyte line' | head -n 60000",
        "printf 'no final newline'",
        RESTART,
    ]
    result = run_cli_bytes(client_env(server), *deploy_args(registered, *commands),
                           cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job_id = job_id_of(result.stderr.decode())
    log = full_log(server, job_id).encode("utf-8")
    assert len(log) > 2 * 1024 * 1024
    assert result.stdout in (log, log + b"\n")
    # The server logs undecodable bytes (and NUL) as U+FFFD; the rest passes as is.
    assert b"bin:\xef\xbf\xbd\xef\xbf\xbd" in result.stdout
    assert b" nel:\xc2\x85 ls:\xe2\x80\xa8 end\n" in result.stdout
    assert b"progress 10%\rprogress 50%\rprogress 100%\r\n" in result.stdout
    assert b"x" * 1000000 + b"\n" in result.stdout
    assert b"no final newline" in result.stdout


@pytest.mark.parametrize("stderr", ["2>err.txt", "2>&1"])
async def test_stdout_closed_early_is_no_traceback_and_the_job_completes(
    server: LiveServer, registered: Path, tmp_path: Path, stderr: str
) -> None:
    script = "echo first; sleep 0.5; for i in $(seq 1 20000); do echo line-$i; done"
    args = " ".join(f"'{a}'" for a in deploy_args(registered, script, RESTART))
    command = (f"'{sys.executable}' -m deployster {args} {stderr} | head -1 > head.txt; "
               'echo "${PIPESTATUS[0]}" > rc.txt')
    result = run_shell(command, client_env(server), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rc.txt").read_text().strip() == "0"
    assert len((tmp_path / "head.txt").read_text().splitlines()) == 1
    if stderr == "2>err.txt":
        err = (tmp_path / "err.txt").read_text()
        assert "Traceback" not in err and "Exception ignored" not in err
        assert "stdout was closed" in err
        job_id = job_id_of(err)
        assert re.search(rf"deployster: job {job_id} complete in", err)
        assert job(server, job_id)["status"] == "complete"


# ------------------------------------------------------- behind a proxy


class PrefixProxy(TcpProxy):
    """A reverse proxy serving deployster under ``/deployster/``: the prefix is
    stripped; a request outside it is sent where the server answers 404."""

    PREFIX = b"/deployster/"

    def __init__(self, upstream_port: int) -> None:
        self.paths: list[str] = []
        super().__init__(upstream_port)

    def _serve(self, conn: socket.socket) -> None:
        up = self._upstream()
        threading.Thread(target=self._copy, args=(conn, up, True), daemon=True).start()
        self._copy(up, conn, False)

    def _rewrite(self, match: re.Match[bytes]) -> bytes:
        path = match.group(2)
        self.paths.append(path.decode())
        if path.startswith(self.PREFIX):
            path = path[len(self.PREFIX) - 1:]
        else:
            path = b"/outside-the-prefix" + path
        return match.group(1) + b" " + path + b" HTTP/1.1\r"

    def _copy(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests:
                    data = re.sub(rb"(?m)^([A-Z]+) (/\S*) HTTP/1\.1\r$", self._rewrite, data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._hang_up(src, dst)


async def test_a_url_with_a_path_prefix_sends_every_request_below_it(
    server: LiveServer, registered: Path, tmp_path: Path
) -> None:
    proxy = PrefixProxy(port_of(server))
    try:
        env = client_env(server, DEPLOYSTER_URL=f"http://127.0.0.1:{proxy.port}/deployster/")
        result = run_cli(env, *deploy_args(registered, "echo via-proxy", RESTART), cwd=tmp_path)
    finally:
        proxy.close()
    assert result.returncode == 0, (result.stdout, result.stderr)
    job_id = job_id_of(result.stderr)
    assert "via-proxy\n" in result.stdout
    assert proxy.paths[0] == "/deployster/deploy"
    assert f"/deployster/jobs/{job_id}/stream" in proxy.paths
    assert all(p.startswith("/deployster/") for p in proxy.paths), proxy.paths


def test_the_readme_documents_the_exit_codes_retry_for_and_the_proxy_prefix() -> None:
    section = README[README.index("### GitHub Actions (deployster deploy)"):
                     README.index("### GitHub Actions (curl + jq)")]
    for code in ("0", "1", "2", "130", "143"):
        assert f"\n| {code} |" in section, code
    for needle in ("--retry-for", "DEPLOYSTER_RETRY_FOR", "Retry-After", "Last-Event-ID",
                   "https://host/deployster/", "SIGTERM", "| head -1"):
        assert needle in section, needle


async def test_follow_waits_for_a_server_that_is_restarting(
    server: LiveServer, registered: Path, tmp_path: Path, running: list[Running],
    settings: Settings,
) -> None:
    done = run_cli(client_env(server), *deploy_args(registered, "echo followed", RESTART),
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    job_id = job_id_of(done.stderr)
    server.stop(signal.SIGTERM)
    client = Running(client_env(server), "deploy", "--follow", job_id, cwd=tmp_path)
    running.append(client)
    client.wait_for(client.err, "cannot reach the deployster server")
    again = start_server(settings, tmp_path / "server2.log", port=port_of(server))
    try:
        code = client.finish(60)
        assert code == 0, client.err
        assert "".join(client.out) == done.stdout
    finally:
        again.stop()
