"""Every ``/jobs/<job_id>`` route: the record, its log (a page from a byte
cursor, or followed live as Server-Sent Events), cancel and redeploy
(docs/api.md#endpoints).

Thin: the record comes from the core, the log reads from
``deployster.logreader``, cancel and redeploy from ``deployster.control``. A
project token sees only its own project's jobs: any other id answers 404,
exactly as an unknown one (docs/api.md#what-a-project-token-may-see).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from quart import Blueprint, Response, current_app, request
from quart_schema import document_headers, document_querystring, document_response

from ..access import Principal
from ..control import cancel_job, deployed_commit, redeploy
from ..errors import DeploysterError, TooBusy
from ..logreader import MAX_CURSOR, follow, read_logs
from ..models import Job, JobStatus
from ..outages import classify
from ..queue import EnqueueResult
from ..service import Deployster
from .api import QUEUED_MESSAGE
from .auth import principal, require_token
from .context import core, dispatcher
from .schemas import (
    CursorQuery,
    ErrorReply,
    JobRecord,
    JobReply,
    LogsReply,
    RedeployAccepted,
    StreamHeaders,
)

log = logging.getLogger("deployster.server")

blueprint = Blueprint("jobs", __name__)


# ---------------------------------------------------------------- reads

# How long one wait for new output blocks (XREAD BLOCK) before the job's status
# is looked at again: the latency of status and end events.
WAIT = 0.5
# One log event carries at most this many bytes of text.
EVENT_BYTES = 64 * 1024

STREAM_DESCRIPTION = """\
`text/event-stream`. Starts at the `Last-Event-ID` header, else `?from=`, else 0.

Events:

- `event: status` — `data: {"status": "queued"|"running", "position": <int, queued only>,
  "estimated_start_in": <seconds, queued only, when the project has history>}`,
  sent first and whenever the status or the queue position changes.
- `event: log` — `id: <cursor after this chunk>`, `data: {"text": "<chunk>"}`: the
  chunk is JSON-encoded on one `data:` line so it round-trips exactly (newlines
  included). Concatenating every `text` gives the log byte for byte; reconnecting
  with `Last-Event-ID` (or `?from=`) set to the last `id` resumes exactly after it.
- `event: end` — `data: {"job_id", "status", "reason", "exit_code"}` after the last
  log event of a finished job; the response then ends.
- `event: error` — `data: {"error", "code"}` if Redis or the database failed
  mid-stream (the response ends, reconnect with `Last-Event-ID` to resume), or
  with code `unauthorized` once the project token was revoked or rotated.
- `: keep-alive` comment lines after 15 s without an event.
"""


class InvalidCursor(DeploysterError):
    code = "invalid_cursor"
    http_status = 400


def parse_cursor(raw: str | None, what: str) -> int:
    """A non-negative integer byte offset; missing means 0. Raises InvalidCursor
    (400) for anything else, an empty value included, as the OpenAPI schema
    says (an integer >= 0): what it refuses, the server refuses."""
    if raw is None:
        return 0
    text = raw
    if not text.isascii() or not text.isdigit():
        raise InvalidCursor(f"{what} must be a non-negative integer byte offset, got {raw!r}")
    try:
        value = int(text)
    except ValueError:  # more digits than Python parses
        raise InvalidCursor(f"{what} is too large") from None
    return min(value, MAX_CURSOR + 1)


def query_cursor() -> int:
    """``?from=``: once at most (a repeated one is no integer)."""
    values = request.args.getlist("from")
    if len(values) > 1:
        raise InvalidCursor("'from' must be given once")
    return parse_cursor(values[0] if values else None, "'from'")


@blueprint.get("/jobs/<job_id>")
@require_token
@document_response(JobRecord, 200)
@document_response(ErrorReply, 404)
async def job(job_id: str) -> Any:
    """A job's record.

    Live from Redis while the job is queued or running (with its queue position),
    from the SQL history once Redis has let it go.
    """
    return await core().job_record(job_id, principal())


@blueprint.get("/jobs/<job_id>/logs")
@require_token
@document_querystring(CursorQuery)
@document_response(LogsReply, 200)
@document_response(ErrorReply, 400)
@document_response(ErrorReply, 404)
async def logs(job_id: str) -> Any:
    """A page of a job's log from a byte cursor.

    Non-destructive (unlike `/status`, nothing is consumed): any number of readers.
    Pages hold at most 1 MiB; ask again with `from` = the reply's `next` until
    `finished` is true. A cursor past the end returns no text and `next` = `from`.
    """
    start = query_cursor()
    read = await read_logs(core(), job_id, start, principal=principal())
    return {
        "job_id": read.job.id,
        "status": read.job.status.value,
        "reason": read.job.reason,
        "from": read.start,
        "next": read.next,
        "logs": read.text,
        "finished": read.finished,
    }


def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def end_event(job: Job) -> bytes:
    return sse("end", {"job_id": job.id, "status": job.status.value, "reason": job.reason,
                       "exit_code": job.exit_code})


REVOKED = sse("error", {"error": "Unauthorized: the token was revoked or rotated",
                        "code": "unauthorized"})


async def still_valid(the_core: Deployster, token: str | None, who: Principal) -> bool:
    """Whether a project token still authenticates as ``who`` (one Redis GET
    while no project changed). A stream lasts as long as its job: without
    this, one opened before a revocation went on for the rest of the job (held
    by ``test_a_revoked_token_stops_its_open_stream_at_once`` in
    ``tests/server/test_hardening.py``)."""
    if who.is_admin:
        return True  # the admin token changes only with a restart
    caller = await the_core.authenticate(token)
    return caller is not None and caller.project_id == who.project_id


STREAMS_RETRY_AFTER = 5


class StreamSlots:
    """Counts the live streams of this app: each one holds a Redis connection
    (its blocking reads), so their number is capped."""

    def __init__(self) -> None:
        self.open = 0

    async def hold(self, stream: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        self.open += 1
        try:
            async for chunk in stream:
                yield chunk
        finally:
            self.open -= 1
            await stream.aclose()


async def events(
    the_core: Deployster, job_id: str, start: int, who: Principal, token: str | None = None
) -> AsyncIterator[bytes]:
    # A comment after this long without an event keeps proxies and clients
    # from timing the connection out.
    keepalive = the_core.settings.sse_keepalive
    last_sent = time.monotonic()
    state: tuple[str, int | None] | None = None
    try:
        async for job, part in follow(the_core, job_id, start, block=min(WAIT, keepalive),
                                      max_bytes=EVENT_BYTES, principal=who):
            if not await still_valid(the_core, token, who):
                yield REVOKED
                return
            out: list[bytes] = []
            if not job.status.finished:
                position, starts_in = (await the_core.queue_place(job)
                                       if job.status is JobStatus.QUEUED else (None, None))
                if (job.status.value, position) != state:
                    state = (job.status.value, position)
                    body: dict[str, Any] = {"status": job.status.value}
                    if position is not None:
                        body["position"] = position
                    if starts_in is not None:
                        body["estimated_start_in"] = starts_in
                    out.append(sse("status", body))
            if part.text:
                out.append(sse("log", {"text": part.text}, part.next))
            if job.status.finished and part.at_end:
                out.append(end_event(job))
            now = time.monotonic()
            if out:
                last_sent = now
                yield b"".join(out)
            elif now - last_sent >= keepalive:
                last_sent = now
                yield b": keep-alive\n\n"
    except Exception as exc:  # the headers are sent: say it in-band
        if classify(exc) is None:
            log.exception("stream of job %s failed", job_id)
            yield sse("error", {"error": "internal error; the server log has the details",
                                "code": "internal_error"})
        else:
            log.warning("stream of job %s ended early: %s: %s", job_id, type(exc).__name__, exc)
            yield sse("error", {"error": "a backing service failed; reconnect with Last-Event-ID",
                                "code": "service_unavailable"})


@blueprint.get("/jobs/<job_id>/stream")
@require_token
@document_querystring(CursorQuery)
@document_headers(StreamHeaders)
@document_response(ErrorReply, 400)
@document_response(ErrorReply, 404)
@document_response(ErrorReply, 429)
async def stream(job_id: str) -> Any:
    # The description (STREAM_DESCRIPTION) is appended below.
    # Both are checked; the header, when sent, wins.
    start = query_cursor()
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        start = parse_cursor(header, "Last-Event-ID")
    the_core, who = core(), principal()
    await the_core.find_job(job_id, who)  # 404 now, not inside the stream
    slots = current_app.extensions.setdefault("deployster.streams", StreamSlots())
    if slots.open >= the_core.settings.max_streams:
        raise TooBusy(
            f"this server already serves {slots.open} live streams (DEPLOYSTER_MAX_STREAMS); "
            "retry shortly, or poll /jobs/<id>/logs", retry_after=STREAMS_RETRY_AFTER,
            code="too_many_streams")
    response = Response(
        slots.hold(events(the_core, job_id, start, who, request.headers.get("x-deployster-token"))),
        status=200,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.timeout = None  # as long as the job runs (Quart's default is 60 s)
    return response


stream.__doc__ = (
    "Follow a job live: its log, status changes and end, as Server-Sent Events.\n\n"
    + STREAM_DESCRIPTION
)
# The 200 reply is text/event-stream, not JSON (see ``openapi.DeploysterOpenAPI``).
stream.deployster_event_stream = True  # type: ignore[attr-defined]


# ------------------------------------------------------------- controls


@blueprint.post("/jobs/<job_id>/cancel")
@require_token
@document_response(JobReply, 200)
@document_response(ErrorReply, 404)
@document_response(ErrorReply, 409)
async def cancel(job_id: str) -> Any:
    """Cancel a queued or running job; 409 once it has finished."""
    caller = principal()
    job = await cancel_job(core(), job_id, actor=f"api:{caller.label}", principal=caller)
    return job.to_dict()


def accepted(result: EnqueueResult, **extra: Any) -> dict[str, Any]:
    """The answer to a request that queued a job: POST /deploy's shape, plus
    ``extra``; a job this server may start now is started."""
    if result.started:
        dispatcher().launch(result.started)
    reply: dict[str, Any] = {"job_id": result.job_id, **extra}
    if result.queued:
        reply.update(queued=True, message=QUEUED_MESSAGE)
    return reply


@blueprint.post("/jobs/<job_id>/redeploy")
@require_token
@document_response(RedeployAccepted, 200)
@document_response(ErrorReply, 404)
@document_response(ErrorReply, 409)
async def redeploy_job(job_id: str) -> Any:
    """Queue a job again: its commands, its ref and the very commit it deployed
    (with a git source, a rollback to that code); the stage's variables as they
    are now. The admin token, or the job's project's token. 409
    `secret_in_commands` when its commands held a secret (move it into a stage
    variable)."""
    caller = principal()
    result, job = await redeploy(core(), job_id, actor=f"api:{caller.label}", principal=caller,
                                 run_here=True)
    return accepted(result, redeploy_of=job.id, commit=deployed_commit(job))
