"""Reading a job's log by byte cursor, for any number of readers: the pages of
``GET /jobs/<id>/logs``, the follow of ``/jobs/<id>/stream`` and of
``deployster job logs``.

Only reads: the log is stored by ``logstream`` (the live Redis stream and its
writer) and copied into the SQL history when the job ends. A cursor is a byte
offset into the job's whole log (UTF-8): the live stream's entry ids are those
offsets (docs/redis.md#the-log-stream), and the history copy in SQL is the
same bytes, so one cursor works on both and across the hand-over. Reads never
consume anything (the /status cursor is separate) and a page is bounded
(``PAGE_BYTES``); ``next`` says where to continue. What readers see:
docs/api.md#endpoints, ``GET /jobs/<job_id>/logs`` and ``/stream``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from . import store
from .access import Principal
from .logstream import entry_offset, is_continuation
from .models import Job
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


def slice_bytes(data: bytes, start: int, max_bytes: int) -> tuple[str, int]:
    """``data[start:]`` cut to ``max_bytes`` on character boundaries; returns
    the text and the offset after it. A start inside a character skips to the
    next character."""
    size = len(data)
    if start >= size:
        return "", start
    while start < size and is_continuation(data[start]):
        start += 1
    end = min(size, start + max_bytes)
    while end < size and end > start and is_continuation(data[end]):
        end -= 1
    if end == start and start < size:  # max_bytes smaller than one character
        end = start + 1
        while end < size and is_continuation(data[end]):
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


async def read_logs(core: Deployster, job_id: str, start: int = 0, *,
                    max_bytes: int = PAGE_BYTES, principal: Principal | None = None) -> LogRead:
    """A page of the job's log from byte ``start``; raises NotFound.

    The status is read before the log: a job recorded as ended has flushed
    all of its output, so ``finished`` is only ever true with the last byte.
    """
    job = await core.find_job(job_id, principal)
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
    change); between reads it waits on the stream (``block`` s at most).
    Raises NotFound (``Deployster.find_job``), at any step."""
    position = start
    key = core.keys.log(job_id)
    while True:
        job = await core.find_job(job_id, principal)
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

