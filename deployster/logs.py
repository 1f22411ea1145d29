"""Reading a job and its log by byte cursor, for any number of readers (issue #5).

A cursor is a byte offset into the job's whole log (UTF-8): the live stream's
entry ids are those offsets (see ``logstream``), and the history copy in SQL is
the same bytes, so one cursor works on both and across the hand-over. Reads
never consume anything (the /status cursor is separate) and a page is bounded
(``PAGE_BYTES``); ``next`` says where to continue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from . import store
from .access import Principal
from .errors import NotFound
from .logstream import entry_offset
from .masking import secret_mask
from .models import Job, JobStatus
from .redis_conn import Redis
from .service import Deployster

PAGE_BYTES = 1024 * 1024
# A stream id's ms part is an unsigned 64-bit number; past that nothing exists.
MAX_CURSOR = 2**63 - 1
_XRANGE_COUNT = 64


@dataclass(frozen=True)
class LogSlice:
    text: str
    next: int  # the cursor to continue from
    at_end: bool  # ``next`` is the end of the log as stored right now


@dataclass(frozen=True)
class LogRead:
    job: Job
    text: str
    start: int  # the cursor asked for
    next: int
    finished: bool  # the job has ended and ``next`` is the end of its log


def _is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def slice_bytes(data: bytes, start: int, max_bytes: int) -> tuple[str, int]:
    """``data[start:]`` cut to ``max_bytes`` on character boundaries; returns
    the text and the offset after it. A start inside a character skips to the
    next character."""
    size = len(data)
    if start >= size:
        return "", start
    while start < size and _is_continuation(data[start]):
        start += 1
    end = min(size, start + max_bytes)
    while end < size and end > start and _is_continuation(data[end]):
        end -= 1
    if end == start and start < size:  # max_bytes smaller than one character
        end = start + 1
        while end < size and _is_continuation(data[end]):
            end += 1
    return data[start:end].decode("utf-8", "replace"), end


async def read_stream(
    redis: Redis, key: str, start: int, *, max_bytes: int = PAGE_BYTES
) -> LogSlice | None:
    """Up to ``max_bytes`` of the live stream from byte ``start``; None when
    there is no stream (no output yet, or Redis has let it go)."""
    if start > MAX_CURSOR:
        exists = await redis.exists(key)
        return LogSlice("", start, True) if exists else None
    # The entry holding byte ``start`` (or the last one before it), then onwards.
    before = cast(
        list[tuple[str, dict[str, str]]],
        await redis.xrevrange(key, max=f"{start}-1", min="-", count=1),
    )
    lower = before[0][0] if before else "-"
    parts: list[str] = []
    size = 0
    position = start
    seen_any = bool(before)
    while True:
        entries = cast(
            list[tuple[str, dict[str, str]]],
            await redis.xrange(key, min=lower, max="+", count=_XRANGE_COUNT),
        )
        seen_any = seen_any or bool(entries)
        for entry_id, fields in entries:
            offset = entry_offset(entry_id)
            data = fields.get("d", "").encode("utf-8")
            if offset + len(data) <= position:
                continue  # ends before the cursor (the entry before it)
            skip = max(0, position - offset)
            text, end = slice_bytes(data, skip, max_bytes - size)
            parts.append(text)
            size += end - skip
            position = offset + end
            if end < len(data) or size >= max_bytes:
                last = entry_id == entries[-1][0] and len(entries) < _XRANGE_COUNT
                return LogSlice("".join(parts), position, last and end == len(data))
        if len(entries) < _XRANGE_COUNT:
            break
        lower = f"({entries[-1][0]}"
    if not seen_any:
        return None
    return LogSlice("".join(parts), position, True)


async def read_history(core: Deployster, job_id: str, start: int, *,
                       max_bytes: int = PAGE_BYTES) -> LogSlice:
    """The same read from the SQL history copy of the log."""
    log = await store.select_deployment_log(core.db, job_id) or ""
    data = log.encode("utf-8")
    text, end = slice_bytes(data, start, max_bytes)
    return LogSlice(text, end, end >= len(data))


async def read_slice(core: Deployster, job: Job, start: int, *,
                     max_bytes: int = PAGE_BYTES) -> LogSlice:
    """The live stream while it exists, else (a finished job) the history."""
    live = await read_stream(core.redis, core.keys.log(job.id), start, max_bytes=max_bytes)
    if live is not None:
        return live
    if job.status.finished:
        return await read_history(core, job.id, start, max_bytes=max_bytes)
    return LogSlice("", start, True)  # no output yet


async def visible_job(core: Deployster, job_id: str, principal: Principal | None) -> Job:
    """The job's record if it exists and ``principal`` may see it; else NotFound,
    the same for both (a project token cannot probe other projects' ids)."""
    job = await core.visible_job(job_id, principal)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


async def log_size(core: Deployster, job: Job) -> int | None:
    """The log's length in bytes (its end cursor), None when unknown."""
    last = cast(
        list[tuple[str, dict[str, str]]],
        await core.redis.xrevrange(core.keys.log(job.id), max="+", min="-", count=1),
    )
    if last:
        entry_id, fields = last[0]
        return entry_offset(entry_id) + len(fields.get("d", "").encode("utf-8"))
    if not job.status.finished:
        return 0
    return await store.select_deployment_log_bytes(core.db, job.id)


async def job_record(
    core: Deployster, job_id: str, principal: Principal | None = None
) -> dict[str, Any]:
    """``GET /jobs/<id>``: the record, with the queue position while queued and
    the log's size."""
    job = await visible_job(core, job_id, principal)
    record = job.to_dict()
    # A command may hold a secret (CI expanded one into it): stored masked
    # (Deployster.submit). Masked again here for rows stored before that, and
    # for a secret set since: a stage value added later is hidden too.
    project = await core.projects.get(job.project_id)
    record["commands"] = secret_mask(project, core.settings.token).commands(job.commands)
    record["commands_masked"] = job.commands_masked
    if job.status is JobStatus.QUEUED:
        record["position"] = await core.queue_position(job)
    record["log_bytes"] = await log_size(core, job)
    return record


async def read_logs(core: Deployster, job_id: str, start: int = 0, *,
                    max_bytes: int = PAGE_BYTES, principal: Principal | None = None) -> LogRead:
    """A page of the job's log from byte ``start``; raises NotFound.

    The status is read before the log: a job recorded as ended has flushed
    all of its output, so ``finished`` is only ever true with the last byte.
    """
    job = await visible_job(core, job_id, principal)
    part = await read_slice(core, job, start, max_bytes=max_bytes)
    return LogRead(job, part.text, start, part.next, job.status.finished and part.at_end)


async def wait_for_output(redis: Redis, key: str, after: int, timeout: float) -> None:
    """Block (at most ``timeout`` s) until the stream may hold bytes past
    ``after``: an entry starting at or after it appeared. Returns early on
    output, at the timeout otherwise; never reads anything for the caller."""
    block = max(1, int(timeout * 1000))
    await redis.xread({key: f"{min(after, MAX_CURSOR)}-0"}, count=1, block=block)


async def follow(
    core: Deployster, job_id: str, start: int, *, block: float = 0.5,
    max_bytes: int = 64 * 1024, principal: Principal | None = None,
) -> AsyncIterator[tuple[Job, LogSlice]]:
    """Yield (job, slice) as the log grows, ending after the finished job's
    last byte. Each slice is new output (possibly empty, to report a status
    change); between reads it waits on the stream (``block`` s at most)."""
    position = start
    key = core.keys.log(job_id)
    while True:
        job = await visible_job(core, job_id, principal)
        part = await read_stream(core.redis, key, position, max_bytes=max_bytes)
        if part is None and job.status.finished:
            # Only the history has it: read it once, hand it out in slices.
            data = (await store.select_deployment_log(core.db, job_id) or "").encode("utf-8")
            while True:
                text, position = slice_bytes(data, position, max_bytes)
                at_end = position >= len(data)
                yield job, LogSlice(text, position, at_end)
                if at_end:
                    return
        if part is None:
            part = LogSlice("", position, True)  # no output yet
        position = part.next
        yield job, part
        if job.status.finished and part.at_end:
            return
        if part.at_end:
            await wait_for_output(core.redis, key, position, block)

