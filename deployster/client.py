"""The CI client: ``deployster deploy`` talks to a deployster server over HTTP.

It posts a deploy, shows the queue position while the job waits, streams the log
live (``GET /jobs/<id>/stream``, Server-Sent Events, resumed with
``Last-Event-ID`` when the connection drops) and turns the outcome into an exit
code: 0 complete, 1 failed, 2 when it cannot tell (usage, connection, HTTP
errors, ``--timeout``), 130 when Ctrl-C detaches it. The job itself is never
cancelled by the client.

Only httpx here: no Quart, no Textual, no Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from .errors import DeploysterError

DEFAULT_URL = "http://127.0.0.1:3259"
TOKEN_HEADER = "x-deployster-token"

EXIT_COMPLETE = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_DETACHED = 130


class ClientError(DeploysterError):
    """The client cannot tell how the deploy went: exit 2 with this message."""

    code = "client_error"


class WaitExpired(Exception):
    """``--timeout`` ran out (the job itself is left alone)."""


# ------------------------------------------------------------------ SSE


@dataclass
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.data)
        except ValueError:
            return None


@dataclass
class SSEParser:
    """Server-Sent Events, line by line (the WHATWG rules that matter here).

    An event is ``field: value`` lines ended by a blank line; ``data`` lines
    accumulate (joined by newlines); lines starting with ``:`` are comments
    (keep-alives); ``id`` is remembered across events as the id to resume from.
    """

    last_event_id: str | None = None
    retry: float | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _has_fields: bool = False

    def feed(self, line: str) -> SSEEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit():
                self.retry = int(value) / 1000
            return None
        else:
            return None
        self._has_fields = True
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._has_fields:
            return None
        event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
        if self._id is not None:  # only a whole event moves the resume point
            self.last_event_id = self._id
        self.discard()
        return event

    def discard(self) -> None:
        """Forget a partly received event (the connection broke inside it)."""
        self._event, self._data, self._id, self._has_fields = "", [], None, False

    def feed_text(self, text: str) -> list[SSEEvent]:
        """Parse a whole chunk of stream text (tests, tools)."""
        events = []
        for line in text.splitlines():
            event = self.feed(line)
            if event is not None:
                events.append(event)
        return events


def log_text(event: SSEEvent) -> str:
    """The text of a ``log`` event: ``{"text": …}`` JSON, a JSON string, or raw data."""
    value = event.json()
    if isinstance(value, dict):
        for key in ("text", "logs", "data"):
            if isinstance(value.get(key), str):
                return str(value[key])
        return ""
    if isinstance(value, str):
        return value
    return event.data


# ---------------------------------------------------------------- client


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "status"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
    text = response.text.strip().splitlines()
    return text[0][:200] if text else response.reason_phrase


def http_error(response: httpx.Response, what: str) -> ClientError:
    status = response.status_code
    if status == 403:
        return ClientError(f"token rejected by the server (403) while {what}: "
                           "check DEPLOYSTER_TOKEN", code="unauthorized")
    return ClientError(f"the server answered {status} while {what}: {_error_text(response)}",
                       code=f"http_{status}")


class DeployClient:
    """A small synchronous client for the deployster HTTP API."""

    def __init__(self, url: str, token: str, *, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, retries: int = 10, max_backoff: float = 8.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        try:
            parsed = httpx.URL(self.url)
            if not parsed.host:
                raise httpx.InvalidURL("no host")
        except httpx.InvalidURL as exc:
            raise ClientError(f"--url is not a valid address: {exc}") from None
        # What messages show: never a user:password embedded in the URL.
        self.shown_url = str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else self.url
        self.read_timeout = read_timeout
        self.retries = retries
        self.max_backoff = max_backoff
        self._http = httpx.Client(
            base_url=self.url, headers={TOKEN_HEADER: token},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=transport, follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeployClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: Exception) -> ClientError:
        return ClientError(f"cannot reach the deployster server at {self.shown_url}: "
                           f"{_describe(exc)}", code="unreachable")

    def submit(self, cd: str, commands: Sequence[str], commit_hash: str,
               ref_name: str) -> dict[str, Any]:
        """``POST /deploy``: the reply, ``{"job_id", "queued"?, "message"?}``.

        Not retried: a request that reached the server may have queued a job."""
        body = {"cd": cd, "commands": list(commands), "commit_hash": commit_hash,
                "ref_name": ref_name}
        try:
            response = self._http.post("/deploy", json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code != 200:
            raise http_error(response, "submitting the deploy")
        reply = _json_object(response, "submitting the deploy")
        if not isinstance(reply.get("job_id"), str):
            raise ClientError("the server's reply to POST /deploy has no job_id")
        return reply

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/<id>``: the job record."""
        try:
            response = self._http.get(f"/jobs/{job_id}")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code == 404:
            raise ClientError(f"job {job_id} not found on {self.shown_url}",
                              code="not_found")
        if response.status_code != 200:
            raise http_error(response, f"reading job {job_id}")
        return _json_object(response, f"reading job {job_id}")

    def events(self, job_id: str, *, last_event_id: str | None = None,
               deadline: float | None = None) -> Iterator[SSEEvent]:
        """The job's events until ``end``; a dropped stream is resumed where it
        stopped (``Last-Event-ID``), with backoff, ``retries`` times in a row."""
        parser = SSEParser(last_event_id=last_event_id)
        failures = 0
        last_problem = "the stream ended early"
        while True:
            parser.discard()  # what a broken connection left half-received is not an event
            headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
            if parser.last_event_id is not None:
                headers["last-event-id"] = parser.last_event_id
            read = self.read_timeout
            if deadline is not None:
                read = max(0.05, min(read, deadline - time.monotonic()))
            try:
                with self._http.stream("GET", f"/jobs/{job_id}/stream", headers=headers,
                                       timeout=httpx.Timeout(read, connect=self._connect)
                                       ) as response:
                    if response.status_code == 404:
                        response.read()
                        raise ClientError(f"job {job_id} not found on {self.shown_url}: "
                                          f"{_error_text(response)}", code="not_found")
                    if response.status_code >= 500:
                        response.read()
                        last_problem = f"the server answered {response.status_code}: " \
                                       f"{_error_text(response)}"
                    elif response.status_code != 200:
                        response.read()
                        raise http_error(response, f"streaming job {job_id}")
                    else:
                        for line in response.iter_lines():
                            event = parser.feed(line)
                            if event is None:
                                continue
                            failures = 0
                            yield event
                            if event.event == "end":
                                return
                        last_problem = "the stream ended before the job did"
            except httpx.HTTPError as exc:
                last_problem = _describe(exc)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitExpired
            failures += 1
            if failures > self.retries:
                raise ClientError(
                    f"lost the connection to {self.shown_url} ({last_problem}); gave up after "
                    f"{self.retries} retries. Job {job_id} keeps running on the server.",
                    code="unreachable")
            pause = parser.retry if parser.retry is not None else 0.5 * 2 ** (failures - 1)
            pause = min(pause, self.max_backoff)
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)

    @property
    def _connect(self) -> float | None:
        return self._http.timeout.connect


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ClientError(f"the server's answer while {what} is not a JSON object")
    return value


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({name})"
    return f"{text} ({name})" if text else name


# --------------------------------------------------------- git fallbacks


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else None


def resolve_commit(explicit: str | None) -> str:
    commit = explicit or os.environ.get("GITHUB_SHA") or _git("rev-parse", "HEAD")
    if not commit:
        raise ClientError("no commit: pass --commit SHA, set GITHUB_SHA, or run inside a "
                          "git checkout")
    return commit


def resolve_ref(explicit: str | None) -> str:
    ref = explicit or os.environ.get("GITHUB_REF_NAME")
    if not ref:
        branch = _git("rev-parse", "--abbrev-ref", "HEAD")
        ref = branch if branch and branch != "HEAD" else None
    if not ref:
        raise ClientError("no branch: pass --ref NAME, set GITHUB_REF_NAME, or run on a "
                          "checked-out git branch")
    return ref


# ---------------------------------------------------------- the command


@dataclass
class Options:
    url: str
    token: str
    cd: str | None = None
    commands: Sequence[str] = ()
    commit: str | None = None
    ref: str | None = None
    detach: bool = False
    follow: str | None = None
    timeout: float | None = None


class Display:
    """What the user sees: the log on stdout byte for byte, the rest on stderr.

    On a terminal the queue position is one line updated in place; elsewhere
    (CI) a plain line each time the position changes."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = _isatty(self.err)
        self._pending = False  # an updating line is on screen
        self._position: int | None = None
        self._at_line_start = True

    def note(self, text: str) -> None:
        self._clear()
        print(f"deployster: {text}", file=self.err, flush=True)

    def position(self, position: int) -> None:
        if position == self._position:
            return
        self._position = position
        text = f"deployster: waiting: position {position} in the queue"
        if self.tty:
            self.err.write(f"\r\033[K{text}")
            self.err.flush()
            self._pending = True
        else:
            print(text, file=self.err, flush=True)

    def log(self, text: str) -> None:
        if not text:
            return
        self._clear()
        buffer = getattr(self.out, "buffer", None)
        if buffer is not None:
            self.out.flush()
            buffer.write(text.encode("utf-8", "surrogateescape"))
            buffer.flush()
        else:
            self.out.write(text)
            self.out.flush()
        self._at_line_start = text.endswith("\n")

    def end_of_log(self) -> None:
        """Keep the summary off the last log line when that line has no newline."""
        if not self._at_line_start:
            self.log("\n")

    def _clear(self) -> None:
        if self._pending:
            self.err.write("\r\033[K")
            self.err.flush()
            self._pending = False


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def run(options: Options, display: Display | None = None) -> int:
    """``deployster deploy``: submit (or ``--follow``) and wait; the exit code."""
    display = display or Display()
    started = time.monotonic()
    deadline = started + options.timeout if options.timeout else None
    if not options.url.startswith(("http://", "https://")):
        raise ClientError(f"--url {options.url!r} is not an http:// or https:// address")
    if not options.token:
        raise ClientError("no token: set DEPLOYSTER_TOKEN (or pass --token)")
    if options.follow:
        job_id = options.follow
    else:
        if not options.cd:
            raise ClientError("--cd DIR is required: the project directory on the server")
        if not options.commands:
            raise ClientError("no commands: put them after '--', one argument each, e.g. "
                              "-- \"git pull\" \"supervisorctl restart my-app\"")
        commit, ref = resolve_commit(options.commit), resolve_ref(options.ref)
    with DeployClient(options.url, options.token) as client:
        job_id = options.follow or ""
        try:
            if not options.follow:
                assert options.cd is not None
                reply = client.submit(options.cd, options.commands, commit, ref)
                job_id = reply["job_id"]
                if options.detach:
                    print(job_id, file=display.out, flush=True)
                    state = "queued" if reply.get("queued") else "started"
                    display.note(f"job {job_id} {state}; not waiting (--detach)")
                    return EXIT_COMPLETE
                if reply.get("queued"):
                    display.note(f"job {job_id} queued: "
                                 f"{reply.get('message') or 'another deployment is running'}")
                else:
                    display.note(f"job {job_id} started")
            else:
                record = client.job(job_id)
                display.note(f"following job {job_id} ({record.get('status')})")
            return _follow(client, job_id, display, deadline, started)
        except KeyboardInterrupt:
            display._clear()
            if not job_id:
                print("deployster: interrupted before the server answered: the deploy may "
                      "or may not have been accepted", file=display.err, flush=True)
                return EXIT_DETACHED
            print(f"deployster: detached: job {job_id} keeps running; follow it with: "
                  f"deployster deploy --follow {job_id}  (or: curl -H "
                  f"\"x-deployster-token: $DEPLOYSTER_TOKEN\" {client.shown_url}/jobs/{job_id})",
                  file=display.err, flush=True)
            return EXIT_DETACHED
        except WaitExpired:
            display.end_of_log()
            raise ClientError(f"gave up waiting for job {job_id} after --timeout "
                              f"{options.timeout:g}s; it keeps running on the server "
                              "(not cancelled)", code="timeout") from None


def _follow(client: DeployClient, job_id: str, display: Display, deadline: float | None,
            started: float) -> int:
    status = None
    for event in client.events(job_id, deadline=deadline):
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitExpired
        if event.event == "log":
            display.log(log_text(event))
        elif event.event == "status":
            value = event.json() or {}
            new = value.get("status")
            if new == "queued" and isinstance(value.get("position"), int):
                display.position(value["position"])
            elif new == "running" and status == "queued":
                display.note(f"job {job_id} running")
            status = new or status
        elif event.event == "end":
            display.end_of_log()
            return _summary(event.json() or {}, job_id, display, started)
    raise ClientError(f"the stream of job {job_id} ended without an outcome")


def _summary(end: dict[str, Any], job_id: str, display: Display, started: float) -> int:
    status = end.get("status")
    took = _duration(time.monotonic() - started)
    if status == "complete":
        display.note(f"job {job_id} complete in {took}")
        return EXIT_COMPLETE
    reason = end.get("reason") or "unknown reason"
    detail = f", exit code {end['exit_code']}" if end.get("exit_code") is not None else ""
    display.note(f"job {job_id} {status or 'failed'}: {reason}{detail} after {took}")
    return EXIT_FAILED
