"""The CI client: ``deployster deploy`` talks to a deployster server over HTTP.

It posts a deploy, shows the queue position while the job waits, streams the log
live (``GET /jobs/<id>/stream``, Server-Sent Events, resumed with
``Last-Event-ID`` when the connection drops) and turns the outcome into an exit
code: 0 complete, 1 failed, 2 when it cannot tell (usage, connection, HTTP
errors, ``--timeout``), 130 when Ctrl-C (SIGINT) detaches it, 143 when SIGTERM
does (GitHub Actions cancelling a run sends SIGINT, then SIGTERM). The job
itself is never cancelled by the client.

Blips are waited out, for ``--retry-for`` seconds (60 by default): ``POST
/deploy`` is retried while the server cannot take it (connection refused, 429
queue full, 502/503) honouring ``Retry-After``, and a dropped stream is resumed
from ``Last-Event-ID`` (a server restart included).

This file is also a program of its own: the server hands it out at ``GET
/client``, so a CI job runs ``python3 deployster.py deploy --cd … -- …`` with
nothing installed. Hence the Python standard library only (no httpx, no other
deployster module) and nothing newer than Python 3.8; a test holds it to both.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any, NoReturn

DEFAULT_URL = "http://127.0.0.1:3259"
TOKEN_HEADER = "x-deployster-token"

EXIT_COMPLETE = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_DETACHED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM: detached too

DEFAULT_RETRY_FOR = 60.0  # seconds a blip (server restart, Redis down, queue full) is waited out
# POST /deploy answers retried: nothing was queued (429 queue_full, 503 backend
# down) or the request never reached the server (502 from a reverse proxy).
RETRY_STATUSES = (429, 502, 503)
# A stream that stayed up this long was healthy: a later drop starts a new outage.
HEALTHY_AFTER = 5.0


class ClientError(Exception):
    """The client cannot tell how the deploy went: exit 2 with this message."""

    def __init__(self, message: str, *, code: str = "client_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class WaitExpired(Exception):
    """``--timeout`` ran out (the job itself is left alone)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: detach like Ctrl-C, exit 143."""


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


class TransportError(Exception):
    """The HTTP exchange broke. ``sent`` is False when the connection could not
    even be made (refused, DNS, TLS, proxy): the server never saw the request."""

    def __init__(self, cause: BaseException, *, sent: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.sent = sent
        # An untrusted certificate stays untrusted: waiting it out would only
        # delay the error by --retry-for.
        self.permanent = isinstance(cause, ssl.SSLCertVerificationError)


_BROKEN = (OSError, http.client.HTTPException)


@dataclass
class Response:
    status: int
    reason: str
    headers: Any  # an email.message.Message: case-insensitive ``get``
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is none."""
        return json.loads(self.text)


class Stream:
    """An answer whose body is read as it arrives (the event stream)."""

    def __init__(self, raw: http.client.HTTPResponse) -> None:
        self.raw = raw
        self.status = raw.status

    def read_all(self) -> Response:
        try:
            body = self.raw.read()
        except _BROKEN as exc:
            raise TransportError(exc, sent=True) from None
        return Response(self.raw.status, self.raw.reason, self.raw.headers, body)

    def chunks(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self.raw.read1(65536)
            except _BROKEN as exc:
                raise TransportError(exc, sent=True) from None
            if not chunk:
                return
            yield chunk


class Http:
    """HTTP/1.1 over ``http.client``, one connection per request (a CI job makes
    a handful). Honours ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` and a
    ``user:password@`` in the URL (basic auth, for a proxy in front); never
    follows redirects. The connect timeout is separate from the read timeout, so
    a server that is down is noticed in seconds while a quiet stream may wait."""

    def __init__(self, base: str, headers: dict[str, str], *, connect_timeout: float,
                 read_timeout: float) -> None:
        parts = urllib.parse.urlsplit(base)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.headers = {"user-agent": "deployster-client", "connection": "close", **headers}
        if parts.username is not None:
            self.headers["authorization"] = _basic(parts)
        self.proxy = _proxy_for(parts.scheme, self.host)
        self._tls = ssl.create_default_context() if self.https else None

    def _target(self, path: str) -> str:
        target = self.prefix + path
        if self.proxy is not None and not self.https:  # a plain proxy takes the whole URL
            netloc = f"[{self.host}]" if ":" in self.host else self.host
            target = f"http://{netloc}:{self.port}{target}"
        return target

    def _connection(self) -> http.client.HTTPConnection:
        timeout = self.connect_timeout
        if self.proxy is not None:
            host, port, auth = self.proxy
            if self._tls is not None:  # CONNECT through the proxy, then TLS to the server
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=self._tls)
                conn.set_tunnel(self.host, self.port, headers=auth)
                return conn
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            return conn
        if self._tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self._tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    @contextmanager
    def open(self, method: str, path: str, *, body: bytes | None = None,
             headers: dict[str, str] | None = None,
             read_timeout: float | None = None) -> Iterator[Stream]:
        conn = self._connection()
        try:
            try:
                conn.connect()
            except _BROKEN as exc:
                raise TransportError(exc, sent=False) from None
            if conn.sock is not None:
                conn.sock.settimeout(read_timeout or self.read_timeout)
            all_headers = {**self.headers, **(headers or {})}
            if self.proxy is not None and not self.https and self.proxy[2]:
                all_headers.update(self.proxy[2])
            try:
                conn.request(method, self._target(path), body=body, headers=all_headers)
                raw = conn.getresponse()
            except _BROKEN as exc:
                raise TransportError(exc, sent=True) from None
            yield Stream(raw)
        finally:
            conn.close()

    def request(self, method: str, path: str, *, json_body: Any = None) -> Response:
        body = None if json_body is None else json.dumps(json_body).encode()
        headers = {"content-type": "application/json"} if body is not None else {}
        with self.open(method, path, body=body, headers=headers) as stream:
            return stream.read_all()


def _proxy_for(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
    """The proxy the environment names for this URL, as (host, port, headers)."""
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not parts.hostname:
        return None
    headers = {"proxy-authorization": _basic(parts)} if parts.username is not None else {}
    return parts.hostname, parts.port or 80, headers


def _basic(parts: urllib.parse.SplitResult) -> str:
    """HTTP basic credentials from a URL's ``user:password@``."""
    pair = f"{urllib.parse.unquote(parts.username or '')}:" \
           f"{urllib.parse.unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def _error_text(response: Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "status"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
    text = response.text.strip().splitlines()
    return text[0][:200] if text else response.reason


def http_error(response: Response, what: str) -> ClientError:
    status = response.status
    if status == 403:
        return ClientError(f"token rejected by the server (403) while {what}: "
                           "check DEPLOYSTER_TOKEN", code="unauthorized")
    return ClientError(f"the server answered {status} while {what}: {_error_text(response)}",
                       code=f"http_{status}")


def sse_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """The lines of an event stream: split on CRLF, LF or CR only (the SSE rule).

    Not ``str.splitlines``: it also splits on U+0085, U+2028 and U+2029, which
    JSON leaves unescaped inside a log event."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        start = 0
        size = len(buffer)
        while True:
            lf, cr = buffer.find(b"\n", start), buffer.find(b"\r", start)
            if lf < 0 and cr < 0:
                break
            if cr >= 0 and (lf < 0 or cr < lf):
                if cr + 1 == size:
                    break  # CR at the end: an LF may follow in the next chunk
                end, after = cr, cr + (2 if buffer[cr + 1:cr + 2] == b"\n" else 1)
            else:
                end, after = lf, lf + 1
            yield buffer[start:end].decode("utf-8", "replace")
            start = after
        buffer = buffer[start:]
    if buffer:
        yield buffer.rstrip(b"\r").decode("utf-8", "replace")


def check_url(url: str) -> tuple[str, str]:
    """The server's base URL (no trailing slash; a path prefix kept) and the
    same without any ``user:password@`` for messages; a ``ClientError`` when it
    is no usable http(s) address."""
    base = url.strip().rstrip("/")
    try:
        if any(c.isspace() for c in base):
            raise ValueError("it contains whitespace")
        parsed = urllib.parse.urlsplit(base)
        if parsed.scheme not in ("http", "https"):
            raise ValueError("it must start with http:// or https://")
        if not parsed.hostname:
            raise ValueError("it has no host")
        if parsed.query or parsed.fragment or "?" in base or "#" in base:
            raise ValueError("a ?query or #fragment has no place in it")
        try:
            port = parsed.port
        except ValueError:
            raise ValueError("its port is out of range (1-65535) or no number") from None
        if port is not None and not 0 < port < 65536:
            raise ValueError("its port is out of range")
    except ValueError as exc:
        said = repr(url) if "@" not in url else "(not shown: it holds a user:password)"
        raise ClientError(f"--url/DEPLOYSTER_URL {said} is not an http:// or https:// "
                          f"address of the server: {exc}") from None
    shown = base
    if "@" in parsed.netloc:
        netloc = parsed.netloc.rsplit("@", 1)[1]
        shown = urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return base, shown


def _retry_after(response: Response) -> float | None:
    """``Retry-After`` in seconds (a delay; an HTTP date is ignored)."""
    value = (response.headers.get("retry-after") or "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 3600 else None


def _backoff(attempt: int, cap: float) -> float:
    return float(min(cap, 0.5 * 2 ** (attempt - 1)))


class DeployClient:
    """A small synchronous client for the deployster HTTP API.

    ``url`` may carry a path prefix (a reverse proxy serving deployster under
    ``https://host/deployster/``): every request goes below it. ``retry_for``
    bounds how long one outage is waited out; ``notify`` gets a sentence each
    time the client starts waiting and when it is back."""

    def __init__(self, url: str, token: str, *, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, retry_for: float = DEFAULT_RETRY_FOR,
                 max_backoff: float = 8.0, prog: str = "deployster deploy",
                 notify: Callable[[str], None] | None = None) -> None:
        self.url, self.shown_url = check_url(url)
        self.prog = prog  # how the user runs this client, for "follow it with" hints
        self.read_timeout = read_timeout
        self.retry_for = retry_for
        self.max_backoff = max_backoff
        self.notify = notify or (lambda text: None)
        # True from sending POST /deploy until its answer is in: an interruption
        # then cannot tell whether a job was queued.
        self.posting = False
        self._http = Http(self.url, {TOKEN_HEADER: token}, connect_timeout=connect_timeout,
                          read_timeout=read_timeout)

    def close(self) -> None:
        """Nothing to release (a connection per request); kept for ``with``."""

    def __enter__(self) -> DeployClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: Exception) -> ClientError:
        return ClientError(f"cannot reach the deployster server at {self.shown_url}: "
                           f"{_describe(exc)}", code="unreachable")

    def submit(self, cd: str, commands: Sequence[str], commit_hash: str,
               ref_name: str, *, deadline: float | None = None) -> dict[str, Any]:
        """``POST /deploy``: the reply, ``{"job_id", "queued"?, "message"?}``.

        Retried, for ``retry_for`` seconds (and never past ``deadline``), only
        while nothing can have been queued: the connection was refused (the
        request never left), or the server answered 429 (queue full), 502 or
        503 (a backend down); ``Retry-After`` is honoured. Any other 4xx is
        final at once. A connection lost after the request was sent is not
        retried: the deploy may have been queued."""
        body = {"cd": cd, "commands": list(commands), "commit_hash": commit_hash,
                "ref_name": ref_name}
        started = time.monotonic()
        give_up = started + self.retry_for
        if deadline is not None:
            give_up = min(give_up, deadline)
        attempt = 0
        while True:
            attempt += 1
            self.posting = True
            try:
                response = self._http.request("POST", "/deploy", json_body=body)
            except TransportError as exc:
                if exc.permanent:
                    raise self._unreachable(exc) from None
                if exc.sent:
                    raise ClientError(
                        f"lost the connection to {self.shown_url} while submitting the "
                        f"deploy ({_describe(exc)}): it may or may not have been queued; "
                        "look for it in the dashboard or GET /jobs before deploying again",
                        code="unreachable") from None
                self.posting = False  # the request never reached the server
                problem, wait, error = (f"cannot connect ({_describe(exc)})", None,
                                        self._unreachable(exc))
            else:
                self.posting = False
                if response.status == 200:
                    reply = _json_object(response, "submitting the deploy")
                    if not isinstance(reply.get("job_id"), str):
                        raise ClientError("the server's reply to POST /deploy has no job_id")
                    if attempt > 1:
                        self.notify("the server took the deploy")
                    return reply
                if response.status not in RETRY_STATUSES:
                    raise http_error(response, "submitting the deploy")
                error = http_error(response, "submitting the deploy")
                problem = f"the server answered {response.status}: {_error_text(response)}"
                wait = _retry_after(response)
            now = time.monotonic()
            # The server's Retry-After is a floor; our own backoff shrinks to
            # fit a last attempt at the end of the budget.
            pause = wait if wait is not None else min(_backoff(attempt, self.max_backoff),
                                                      give_up - now)
            if pause <= 0 or now + pause > give_up:
                waited = f" (retried for {now - started:.0f}s)" if attempt > 1 else ""
                if wait is not None and now + pause > started + self.retry_for:
                    waited += f"; it asks to retry after {wait:g}s, past --retry-for"
                raise ClientError(f"{error.message}{waited}", code=error.code)
            self.notify(f"{problem}; nothing was queued, retrying POST /deploy in {pause:.3g}s")
            time.sleep(pause)

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/<id>``: the job record (a read: retried like the stream,
        for ``retry_for`` seconds, while the server is unreachable or answers 5xx)."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request("GET", f"/jobs/{_segment(job_id)}")
            except TransportError as exc:
                if exc.permanent:
                    raise self._unreachable(exc) from None
                error, wait = self._unreachable(exc), None
            else:
                if response.status < 500 and response.status != 429:
                    break
                error, wait = http_error(response, f"reading job {job_id}"), _retry_after(response)
            now = time.monotonic()
            pause = wait if wait is not None else _backoff(attempt, self.max_backoff)
            if now + pause > started + self.retry_for:
                raise error
            self.notify(f"{error.message}; retrying in {pause:.3g}s")
            time.sleep(pause)
        if response.status == 404:
            raise ClientError(f"job {job_id} not found on {self.shown_url}",
                              code="not_found")
        if response.status != 200:
            raise http_error(response, f"reading job {job_id}")
        return _json_object(response, f"reading job {job_id}")

    def events(self, job_id: str, *, last_event_id: str | None = None,
               deadline: float | None = None) -> Iterator[SSEEvent]:
        """The job's events until ``end``.

        A dropped stream (network, proxy, a server restart, a 5xx) is resumed
        where it stopped (``Last-Event-ID``), with backoff, for ``retry_for``
        seconds from the drop; the server's in-band ``error`` events are not
        passed on (the stream then ends and is resumed)."""
        parser = SSEParser(last_event_id=last_event_id)
        outage: float | None = None  # when the current run of failures began
        lost = False  # "lost the stream" said, "reconnected" not yet
        attempt = 0
        last_problem = "the stream ended early"
        while True:
            parser.discard()  # what a broken connection left half-received is not an event
            headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
            if parser.last_event_id is not None:
                headers["last-event-id"] = parser.last_event_id
            read = self.read_timeout
            if deadline is not None:
                read = max(0.05, min(read, deadline - time.monotonic()))
            connected: float | None = None
            try:
                with self._http.open("GET", f"/jobs/{_segment(job_id)}/stream",
                                     headers=headers, read_timeout=read) as stream:
                    if stream.status == 404:
                        raise ClientError(f"job {job_id} not found on {self.shown_url}: "
                                          f"{_error_text(stream.read_all())}", code="not_found")
                    if stream.status >= 500:
                        last_problem = f"the server answered {stream.status}: " \
                                       f"{_error_text(stream.read_all())}"
                    elif stream.status != 200:
                        raise http_error(stream.read_all(), f"streaming job {job_id}")
                    else:
                        connected = time.monotonic()
                        for line in sse_lines(stream.chunks()):
                            event = parser.feed(line)
                            if event is None:
                                continue
                            if event.event == "error":
                                value = event.json()
                                last_problem = "the server reported: " + (
                                    str(value.get("error")) if isinstance(value, dict)
                                    else event.data)
                                continue
                            if lost:
                                lost = False
                                self.notify(f"reconnected to the stream of job {job_id}")
                            if event.event in ("log", "end"):  # progress: the outage is over
                                outage, attempt = None, 0
                            yield event
                            if event.event == "end":
                                return
                        last_problem = "the stream ended before the job did"
            except TransportError as exc:
                if exc.permanent:
                    raise self._unreachable(exc) from None
                last_problem = _describe(exc)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise WaitExpired
            if outage is None or (connected is not None and now - connected >= HEALTHY_AFTER):
                outage, attempt = now, 0  # a new outage (not the same one going on)
                if not lost:
                    lost = True
                    self.notify(f"lost the stream of job {job_id} ({last_problem}); "
                                f"reconnecting for up to {self.retry_for:g}s")
            attempt += 1
            if now - outage >= self.retry_for:
                raise ClientError(
                    f"lost the connection to {self.shown_url} ({last_problem}); gave up "
                    f"reconnecting after {now - outage:.0f}s (--retry-for {self.retry_for:g}). "
                    f"Job {job_id} keeps running on the server: follow it with "
                    f"{self.prog} --follow {job_id}", code="unreachable")
            pause = parser.retry if parser.retry is not None else _backoff(attempt,
                                                                         self.max_backoff)
            pause = min(pause, self.max_backoff, max(0.0, outage + self.retry_for - now))
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - now))
            time.sleep(pause)



def _segment(value: str) -> str:
    """``value`` as one path segment (a job id typed by hand may hold anything)."""
    return urllib.parse.quote(value, safe="")


def _json_object(response: Response, what: str) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ClientError(f"the server's answer while {what} is not a JSON object")
    return value


def _describe(exc: BaseException) -> str:
    """What broke, in a few words: ``Connection refused (ConnectionRefusedError)``."""
    if isinstance(exc, TransportError):
        exc = exc.cause
    name = type(exc).__name__
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"timed out ({name})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message} ({name})"
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).strip()
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
    retry_for: float = DEFAULT_RETRY_FOR
    prog: str = "deployster deploy"  # how the user runs this client (for hints)


def about(seconds: float) -> str:
    """A wait in words, as rough as the estimate it comes from: 'any moment',
    'about 40s', 'about 3 min', 'about 1 h 20 min'."""
    if seconds < 1:
        return "any moment"
    if seconds < 90:
        return f"about {round(seconds)}s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60} min"


class Display:
    """What the user sees: the log on stdout byte for byte, the rest on stderr.

    On a terminal the queue position is one line updated in place; elsewhere
    (CI) a plain line each time the position changes. A closed stdout (``|
    head -1``) or stderr is no error: what would go there is dropped and the
    job is still followed to its end, for the exit code."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = _isatty(self.err)
        self._pending = False  # an updating line is on screen
        self._position: int | None = None
        self._at_line_start = True
        self.out_closed = False
        self.err_closed = False

    def note(self, text: str) -> None:
        self._clear()
        self._err(f"deployster: {text}\n")

    def line(self, text: str) -> None:
        """One line of stdout (the job id with ``--detach``)."""
        self.log(f"{text}\n")

    def position(self, position: int, starts_in: float | None = None) -> None:
        """The job's place in the queue and, when the server has an estimate
        (the project has history), about when it starts."""
        if position == self._position:
            return
        self._position = position
        text = f"deployster: waiting: position {position} in the queue"
        if starts_in is not None:
            text += f", starts in {about(starts_in)}"
        if self.tty:
            self._err(f"\r\033[K{text}")
            self._pending = not self.err_closed
        else:
            self._err(f"{text}\n")

    def log(self, text: str) -> None:
        if not text:
            return
        self._clear()
        self._at_line_start = text.endswith("\n")
        if self.out_closed:
            return
        try:
            buffer = getattr(self.out, "buffer", None)
            if buffer is not None:
                self.out.flush()
                buffer.write(text.encode("utf-8", "surrogateescape"))
                buffer.flush()
            else:
                self.out.write(text)
                self.out.flush()
        except BrokenPipeError:
            self.out_closed = True
            silence(self.out)
            self.note("stdout was closed: the rest of the log is not shown; still following "
                      "the job for its outcome")

    def end_of_log(self) -> None:
        """Keep the summary off the last log line when that line has no newline."""
        if not self._at_line_start:
            self.log("\n")

    def _err(self, text: str) -> None:
        if self.err_closed:
            return
        try:
            self.err.write(text)
            self.err.flush()
        except BrokenPipeError:
            self.err_closed = True
            silence(self.err)

    def _clear(self) -> None:
        if self._pending:
            self._pending = False
            self._err("\r\033[K")


def silence(stream: IO[str]) -> None:
    """Point a closed pipe's descriptor at /dev/null, so that the interpreter's
    last flush of what is still buffered cannot fail at exit."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


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


def clean_token(token: str) -> str:
    """The token as sent: surrounding whitespace dropped (a CI secret saved with
    its trailing newline is common); anything else that cannot go in a header
    is a usage error, reported without echoing the token."""
    token = token.strip()
    if not token:
        raise ClientError("no token: set DEPLOYSTER_TOKEN (or pass --token)")
    if any(not ("!" <= c <= "~") for c in token):
        raise ClientError("the token contains spaces, line breaks or non-ASCII characters: "
                          "check the DEPLOYSTER_TOKEN secret (it must be the token alone)")
    return token


def _check_request(options: Options) -> None:
    """What the server would refuse anyway, said before anything is sent.

    ``--cd`` is a directory on the server: it need not exist where the client runs."""
    if not options.cd or not options.cd.strip():
        raise ClientError("--cd DIR is required: the project directory on the server")
    if not options.commands:
        raise ClientError("no commands: put them after '--', one argument each, e.g. "
                          "-- \"git pull\" \"supervisorctl restart my-app\"")
    for number, command in enumerate(options.commands, 1):
        if not command.strip():
            raise ClientError(f"command {number} of {len(options.commands)} is empty: each "
                              "argument after '--' is one command")


@dataclass
class _State:
    client: DeployClient | None = None
    job_id: str = ""
    prog: str = "deployster deploy"


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def run(options: Options, display: Display | None = None) -> int:
    """``deployster deploy``: submit (or ``--follow``) and wait; the exit code.

    SIGINT (Ctrl-C) and SIGTERM detach: the job keeps running, the way to follow
    it is printed, and the exit code is 130 or 143."""
    display = display or Display()
    state = _State(prog=options.prog)
    handlers: dict[signal.Signals, Any] = {}
    try:
        handlers[signal.SIGINT] = signal.getsignal(signal.SIGINT)
        handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        handlers.clear()
    try:
        return _run(options, display, state)
    except KeyboardInterrupt as exc:
        for signum in handlers:  # a second signal is not a traceback
            signal.signal(signum, signal.SIG_IGN)
        return _detached(display, state, terminated=isinstance(exc, Terminated))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _detached(display: Display, state: _State, *, terminated: bool) -> int:
    display._clear()
    display.end_of_log()
    code = EXIT_TERMINATED if terminated else EXIT_DETACHED
    client = state.client
    if state.job_id:
        url = client.shown_url if client else "$DEPLOYSTER_URL"
        display.note(f"detached: job {state.job_id} keeps running; follow it with: "
                     f"{state.prog} --follow {state.job_id}  (or: curl -H "
                     f"\"x-deployster-token: $DEPLOYSTER_TOKEN\" {url}/jobs/{state.job_id})")
    elif client is not None and client.posting:
        display.note("interrupted while the server was answering POST /deploy: the deploy "
                     "may or may not have been queued; look for it in the dashboard or "
                     "GET /jobs before deploying again")
    else:
        display.note("interrupted before the deploy was submitted: nothing was queued")
    return code


def _run(options: Options, display: Display, state: _State) -> int:
    started = time.monotonic()
    deadline = started + options.timeout if options.timeout else None
    check_url(options.url)
    token = clean_token(options.token)
    commit = ref = ""
    if not options.follow:
        _check_request(options)
        commit, ref = resolve_commit(options.commit), resolve_ref(options.ref)
    with DeployClient(options.url, token, retry_for=options.retry_for, prog=options.prog,
                      notify=display.note) as client:
        state.client = client
        state.job_id = options.follow or ""
        try:
            if not options.follow:
                assert options.cd is not None
                reply = client.submit(options.cd, options.commands, commit, ref,
                                      deadline=deadline)
                state.job_id = reply["job_id"]
                if options.detach:
                    display.line(state.job_id)
                    what = "queued" if reply.get("queued") else "started"
                    display.note(f"job {state.job_id} {what}; not waiting (--detach)")
                    return EXIT_COMPLETE
                if reply.get("queued"):
                    display.note(f"job {state.job_id} queued: "
                                 f"{reply.get('message') or 'another deployment is running'}")
                else:
                    display.note(f"job {state.job_id} started")
            else:
                record = client.job(state.job_id)
                display.note(f"following job {state.job_id} ({record.get('status')})")
            return _follow(client, state.job_id, display, deadline, started)
        except WaitExpired:
            display.end_of_log()
            if not state.job_id:
                raise ClientError(f"gave up submitting the deploy after --timeout "
                                  f"{options.timeout:g}s", code="timeout") from None
            raise ClientError(f"gave up waiting for job {state.job_id} after --timeout "
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
                starts_in = value.get("estimated_start_in")
                display.position(value["position"], starts_in
                                 if isinstance(starts_in, (int, float)) else None)
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


# ------------------------------------------------------- the command line
# Shared by ``deployster deploy`` (cli.py) and this file run on its own.

USAGE = """\
{prog} [--url URL] [--token TOKEN] --cd DIR [--commit SHA] [--ref REF]
       {pad} [--detach] [--timeout S] [--retry-for S] -- COMMAND...
       {prog} --follow JOB_ID [--timeout S] [--retry-for S]"""

DESCRIPTION = ("Ask a deployster server to deploy: post the deploy, wait in the project's "
               "queue, stream the job's log to stdout as it is produced (messages go to "
               "stderr) and exit with the outcome. Nothing here ever cancels the job.")

EPILOG = """\
environment:
  DEPLOYSTER_URL         the server (--url); e.g. https://host/deployster behind a proxy
  DEPLOYSTER_TOKEN       the API token (--token); a trailing newline is ignored
  DEPLOYSTER_RETRY_FOR   --retry-for
  GITHUB_SHA             the commit when --commit is not given
  GITHUB_REF_NAME        the branch when --ref is not given
  HTTPS_PROXY, NO_PROXY  a proxy on the way to the server

exit codes:
  0    the deploy completed (with --detach: the server accepted it)
  1    the deploy failed (command failed, cancelled, timed out, interrupted, ...)
  2    outcome unknown: usage error, server unreachable past --retry-for, HTTP
       error (403 token rejected, 422 the server's message, 429/503 past
       --retry-for), or --timeout expired; the job, if any, keeps running
  130  SIGINT (Ctrl-C): detached, the job keeps running
  143  SIGTERM (e.g. a cancelled GitHub Actions run): detached, the job keeps running

A dropped stream (a server restart included) is resumed where it stopped; POST
/deploy is retried only while nothing can have been queued (connection
refused, 429, 502, 503), honouring Retry-After.

example:
  {prog} --cd /var/www/my-app -- "git pull" "supervisorctl restart my-app"
"""


def seconds(*, positive: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, > 0 (or >= 0 when
    ``positive`` is false)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(
                f"{text!r}: must be a {'positive' if positive else 'non-negative'} number "
                "of seconds")
        return value
    return parse


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """A usage error of ``parser``: one ``deployster: error:`` line, exit 2 (CI logs)."""
    def error(message: str) -> NoReturn:
        parser.exit(2, f"deployster: error: {message} (see '{parser.prog} --help')\n")
    parser.error = error  # type: ignore[method-assign]


def parser_texts(prog: str) -> dict[str, Any]:
    """usage, description and epilog of the deploy command run as ``prog``."""
    return {"usage": USAGE.format(prog=prog, pad=" " * len(prog)),
            "description": DESCRIPTION, "epilog": EPILOG.format(prog=prog),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url",
                        help="the server, with its path prefix behind a reverse proxy "
                             "(DEPLOYSTER_URL, else http://127.0.0.1:3259)")
    parser.add_argument("--token",
                        help="the API token (better: DEPLOYSTER_TOKEN, kept out of ps and "
                             "shell history; surrounding whitespace is ignored)")
    parser.add_argument("--cd", metavar="DIR",
                        help="the project directory on the server (need not exist here)")
    parser.add_argument("--commit", metavar="SHA",
                        help="the commit (GITHUB_SHA, else git rev-parse HEAD)")
    parser.add_argument("--ref", metavar="REF",
                        help="the branch (GITHUB_REF_NAME, else the checked-out branch)")
    parser.add_argument("--detach", action="store_true",
                        help="print the job id once accepted and exit 0 without waiting")
    parser.add_argument("--follow", metavar="JOB_ID",
                        help="submit nothing: follow an existing job to its end")
    parser.add_argument("--timeout", type=seconds(positive=True), metavar="S",
                        help="stop waiting after S seconds (exit 2; the job keeps running)")
    parser.add_argument("--retry-for", type=seconds(positive=False), metavar="S",
                        help="wait out a server restart, Redis down or a full queue for up "
                             "to S seconds before exit 2 (DEPLOYSTER_RETRY_FOR, default 60; "
                             "0: no retries)")
    parser.add_argument("commands", nargs="*", metavar="COMMAND",
                        help="after '--': the commands, one argument each; the last must be "
                             "'supervisorctl start|restart <program>'")


def options_from(args: argparse.Namespace, prog: str = "deployster deploy") -> Options:
    """The parsed arguments, with the environment's defaults filled in."""
    retry_for = args.retry_for
    if retry_for is None:
        raw = os.environ.get("DEPLOYSTER_RETRY_FOR", "").strip()
        try:
            retry_for = seconds(positive=False)(raw) if raw else DEFAULT_RETRY_FOR
        except argparse.ArgumentTypeError as exc:
            raise ClientError(f"DEPLOYSTER_RETRY_FOR={exc}") from None
    return Options(
        url=args.url or os.environ.get("DEPLOYSTER_URL", "").strip() or DEFAULT_URL,
        token=args.token or os.environ.get("DEPLOYSTER_TOKEN") or "", cd=args.cd,
        commands=args.commands, commit=args.commit, ref=args.ref, detach=args.detach,
        follow=args.follow, timeout=args.timeout, retry_for=retry_for, prog=prog,
    )


def unrecognized(parser: argparse.ArgumentParser, extra: Sequence[str]) -> NoReturn:
    parser.exit(2, f"deployster: error: unrecognized arguments: {' '.join(extra)}; put the "
                   f"commands after '--' (see '{parser.prog} --help')\n")


def main(argv: Sequence[str] | None = None) -> int:
    """This file run on its own: ``python3 deployster.py deploy --cd DIR -- …``
    (the word ``deploy`` may be left out), as ``deployster deploy`` takes it."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["deploy"]:
        args_in = args_in[1:]
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if script in ("", "-", "-c"):
        script = "deployster.py"
    prog = f"python3 {script} deploy"
    parser = argparse.ArgumentParser(prog=prog, **parser_texts(prog))
    one_line_errors(parser)
    add_arguments(parser)
    args, extra = parser.parse_known_args(args_in)
    if extra:
        unrecognized(parser, extra)
    try:
        return run(options_from(args, prog))
    except ClientError as exc:
        print(f"deployster: error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
