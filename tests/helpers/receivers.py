"""Local HTTP endpoints that notifications are sent to: a ``Receiver`` (a
webhook, Slack or Discord target that records what it is POSTed and answers
as told: a status per request, or no answer at all) and a ``FakeGitHub`` (the
deployments API, checking each call and its order).

Each serves from a thread of its own (``http.server``), so it goes on
answering while a test blocks (a server being stopped, a sync client) and a
test can wait for it from any loop. A fixed ``port`` lets a test start one
where a target that was down is configured to be.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from tests.helpers.server import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def signed_with(self, secret: str) -> bool:
        """The body's ``X-Deployster-Signature`` is HMAC-SHA256 with ``secret``."""
        want = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-deployster-signature", ""), want)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Receiver:
    """Records every POST; answers each with the next of ``answers`` (then
    200), or, while ``hang()`` is on, not at all until ``release()``."""

    def __init__(self, answers: list[int] | None = None, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.answers = list(answers or [])
        self.requests: list[Received] = []  # every request, answered or not
        self.accepted: list[Received] = []  # those answered 2xx
        self._hanging = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    # -- behaviour
    def hang(self) -> None:
        """Requests from now on get no answer until ``release()``."""
        self._released.clear()
        self._hanging.set()

    def release(self) -> None:
        self._hanging.clear()
        self._released.set()

    @property
    def waiting(self) -> int:
        """Requests received and not answered (held by ``hang``)."""
        return len(self.requests) - self._answered

    def respond(self, received: Received) -> tuple[int, bytes]:
        """The status and body for a request (FakeGitHub answers its own way)."""
        status = self.answers.pop(0) if self.answers else 200
        return status, b"ok"

    # -- serving
    def __enter__(self) -> Receiver:
        receiver = self
        self._answered = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received = Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                    self.rfile.read(length))
                with receiver._lock:
                    receiver.requests.append(received)
                if receiver._hanging.is_set():
                    receiver._released.wait(120)
                with receiver._lock:
                    status, body = receiver.respond(received)
                    receiver._answered += 1
                    if 200 <= status < 300:
                        receiver.accepted.append(received)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    async def wait_for(self, count: int, *, accepted: bool = True,
                       timeout: float = 30) -> list[Received]:
        """Once at least ``count`` requests (answered 2xx, unless not
        ``accepted``) have arrived: all of them."""
        seen = self.accepted if accepted else self.requests
        deadline = time.monotonic() + timeout
        while len(seen) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(seen)} request(s) after {timeout}s, want {count}: "
                                     f"{[r.body[:200] for r in self.requests]}")
            await asyncio.sleep(0.02)
        return list(seen)

    def events(self) -> list[tuple[str, str]]:
        """(event, job id) of each accepted webhook body, in arrival order."""
        return [(r.json["event"], r.json["job_id"]) for r in self.accepted]


@dataclass
class Deployment:
    id: int
    request: dict[str, Any]
    states: list[str] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)


class FakeGitHub(Receiver):
    """GitHub's deployments API as deployster uses it: ``POST
    /repos/{o}/{r}/deployments`` (201 with an id) and ``POST …/{id}/statuses``
    (201). Checks each call (the token, the fields GitHub requires, a status
    only for a deployment it made) and records what breaks the rules in
    ``errors``; ``fail_statuses`` answers the next so many status posts 500."""

    STATES = {"error", "failure", "inactive", "in_progress", "queued", "pending", "success"}

    def __init__(self, token: str, repo: str = "acme/app", *, port: int | None = None) -> None:
        super().__init__(port=port)
        self.token = token
        self.repo = repo
        self.deployments: dict[int, Deployment] = {}
        self.errors: list[str] = []
        self.fail_statuses = 0
        self.calls: list[str] = []  # "create <ref>" / "status <id> <state>" as answered

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v3"

    def respond(self, received: Received) -> tuple[int, bytes]:
        if received.headers.get("authorization") != f"Bearer {self.token}":
            self.errors.append(f"bad token on {received.path}")
            return 401, b'{"message": "Bad credentials"}'
        base = f"/api/v3/repos/{self.repo}/deployments"
        body = received.json
        if received.path == base:
            missing = {"ref", "environment", "auto_merge", "required_contexts"} - set(body)
            if missing or body["auto_merge"] is not False or body["required_contexts"] != []:
                self.errors.append(f"bad deployment request {body}")
                return 422, b'{"message": "Validation Failed"}'
            new = Deployment(len(self.deployments) + 1, body)
            self.deployments[new.id] = new
            self.calls.append(f"create {body['ref']}")
            return 201, json.dumps({"id": new.id}).encode()
        parts = received.path[len(base) + 1:].split("/")
        if received.path.startswith(base + "/") and len(parts) == 2 and parts[1] == "statuses":
            deployment = self.deployments.get(int(parts[0])) if parts[0].isdigit() else None
            if deployment is None:
                self.errors.append(f"status for unknown deployment {parts[0]}")
                return 404, b'{"message": "Not Found"}'
            if body.get("state") not in self.STATES:
                self.errors.append(f"bad state {body.get('state')}")
                return 422, b'{"message": "Validation Failed"}'
            if self.fail_statuses > 0:
                self.fail_statuses -= 1
                return 500, b'{"message": "Server Error"}'
            deployment.states.append(body["state"])
            deployment.statuses.append(body)
            self.calls.append(f"status {deployment.id} {body['state']}")
            return 201, b"{}"
        self.errors.append(f"unexpected call {received.path}")
        return 404, b'{"message": "Not Found"}'

    def by_ref(self) -> dict[str, Deployment]:
        return {d.request["ref"]: d for d in self.deployments.values()}

    async def wait_for_states(self, ref: str, count: int, timeout: float = 30) -> Deployment:
        deadline = time.monotonic() + timeout
        while True:
            found = self.by_ref().get(ref)
            if found is not None and len(found.states) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"deployment of {ref}: {found}; calls {self.calls}, "
                                     f"errors {self.errors}")
            await asyncio.sleep(0.02)
