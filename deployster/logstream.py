"""A job's output as a Redis stream: one entry per chunk, any number of readers.

The runner appends through a ``LogWriter``, which batches chunks (a flush every
50 ms or 256 KiB, one script call per flush) so a chatty build costs a handful of
round trips, not one per line. Past the per-job byte cap the rest is dropped
and a marker line says how much — never silently. Readers (the /status cursor,
history, the dashboard, the log API through ``logreader``) read by stream id and
never consume anything.

An entry's id is ``<byte offset>-1``: where its text starts in the job's whole
log (see ``redis_scripts/append.lua``, the one script that appends), so a stream
id, an API log cursor and a byte position in the history copy are one and the
same number.

Appends are idempotent: a batch whose reply was lost (a dropped connection, a
Redis restart) can be sent again — by redis-py's own retry or by the writer —
and goes in once (see ``append.lua``), so the log is byte for byte what the job
printed, whatever happened on the way.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from .keys import Keys
from .redis_conn import REDIS_DOWN, Redis
from .redis_scripts import Scripts

log = logging.getLogger("deployster.logstream")

ENTRY_BYTES = 64 * 1024  # upper bound of one stream entry
FLUSH_BYTES = 256 * 1024
FLUSH_INTERVAL = 0.05
# Backstop for the stream's length: the byte cap is what normally bounds it.
# Batching keeps a job to at most ~20 entries a second, so this is ~14 hours of
# non-stop trickling output; trimming before that would make the history copy
# start later than the byte cursors (offset N == byte N of the whole log).
MAXLEN = 1_000_000
# What a NUL in a job's output is logged as (as undecodable bytes are).
NUL_REPLACEMENT = "\ufffd"


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def is_continuation(byte: int) -> bool:
    """A UTF-8 continuation byte (10xxxxxx): not where a character starts."""
    return byte & 0xC0 == 0x80


def utf8_prefix(data: bytes, limit: int, start: int = 0) -> int:
    """Where the longest run of ``data`` (valid UTF-8) from ``start`` of at most
    ``limit`` bytes ends without splitting a character."""
    end = start + max(limit, 0)
    if end >= len(data):
        return len(data)
    while end > start and is_continuation(data[end]):
        end -= 1
    return end


def entry_chunks(data: bytes) -> list[bytes]:
    """``data`` (valid UTF-8) in pieces of at most ``ENTRY_BYTES`` bytes, each of
    whole characters, so that every entry decodes on its own."""
    chunks = []
    start = 0
    while start < len(data):
        end = utf8_prefix(data, ENTRY_BYTES, start)
        chunks.append(data[start:end])
        start = end
    return chunks


def entry_offset(entry_id: str) -> int:
    """The byte offset an entry starts at (the ms part of its id)."""
    return int(entry_id.split("-", 1)[0])


def now_ms() -> int:
    return int(time.time() * 1000)


async def append(redis: Redis, keys: Keys, job_id: str, *chunks: str) -> int:
    """Append ``chunks`` unfenced (a closing line written by someone else than
    the runner); returns the log's length in bytes afterwards.

    Idempotent for a retry: the batch id is derived from the text, so the same
    text sent again while it is still the log's last entry (a lost reply
    retried, one job ended twice) is not repeated.
    """
    data = "".join(chunks).replace("\x00", NUL_REPLACEMENT).encode("utf-8", "replace")
    batch = "a:" + hashlib.sha1(data).hexdigest()[:20]
    return int(await Scripts.of(redis, keys).append(
        job_id=job_id, fence="", maxlen=MAXLEN, now_ms=now_ms(), batch=batch, expect="",
        chunks=entry_chunks(data))) - 1


# How long close() keeps retrying its last flush while Redis is unreachable.
CLOSE_RETRY_FOR = 60.0


@dataclass(frozen=True)
class _Batch:
    id: str  # unique to this batch of this writer: how append.lua knows it is in
    chunks: list[bytes]
    size: int


@dataclass(frozen=True)
class LastBatch:
    """A writer's last batch, sent with the job's end (``LogWriter.seal``):
    ``id`` names it (append.lua's idempotence), ``chunks`` one stream entry
    each, ``expect`` the log's length in bytes the writer last saw."""

    id: str
    chunks: list[bytes]
    expect: int


class LogWriter:
    """Buffers a job's output and appends it to the job's stream in batches.

    With ``fence`` set, every append is checked against the job's record (see
    ``append.lua``). While Redis is unreachable the output stays buffered
    (bounded by the cap) and goes out with the next successful flush.

    A batch whose append failed may have run all the same (only its reply was
    lost): it is sent again first, alone, unchanged and under the same id, and
    ``append.lua`` appends it only if it is not in yet. One script call per flush
    in the usual case, two after a failure.

    The cap counts every byte taken for the log, whether buffered, in flight or
    written (``kept``), so the log holds at most ``cap_bytes`` of output plus the
    truncation marker; ``dropped`` is what went over. Once anything was dropped
    the writer is ``full``: later output is dropped too, even if a few bytes of
    room were left by a character that did not fit, so what is kept is always
    the start of the output.
    """

    def __init__(
        self, redis: Redis, keys: Keys, job_id: str, *, cap_bytes: int, fence: int | None = None
    ) -> None:
        self.redis = redis
        self.job_id = job_id
        self.key = keys.log(job_id)
        self.cap_bytes = cap_bytes
        self.fence = fence
        self.kept = 0  # bytes taken for the log: buffered, in flight or written
        self.written = 0  # bytes Redis acknowledged
        self.dropped = 0
        self.full = False
        self.stale = False
        self.scripts = Scripts.of(redis, keys)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._writer_id = secrets.token_hex(6)
        self._seq = 0
        # The log's length after this writer's last acknowledged append. A job's
        # log starts empty; were it not, the first append would look through it once.
        self._offset = 0
        self._unsent: _Batch | None = None  # sent, but whether it went in is unknown
        self._last = b"\n"  # the last byte kept: a note starts a line of its own
        self._closing: bytes | None = None
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._flush_lock = asyncio.Lock()

    async def __aenter__(self) -> LogWriter:
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"log-flush:{self.key}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writing
    def write_bytes(self, data: bytes) -> None:
        if self.full or self.stale:  # nothing more goes in: spare the decoding
            self.drop(len(data))
            return
        self.write(self._decoder.decode(data))

    def write(self, text: str) -> None:
        if not text:
            return
        if self.full or self.stale:
            self.drop(len(text.encode("utf-8", "replace")))
            return
        if "\x00" in text:
            # PostgreSQL text cannot hold NUL: one job printing it made every
            # history batch fail, for all jobs, forever (held by
            # test_nul_in_the_output_does_not_stop_the_history in
            # tests/server/test_hardening.py). Done here, so the stream and the
            # history copy stay byte for byte alike.
            text = text.replace("\x00", NUL_REPLACEMENT)
        # A lone surrogate (a str from Python, not from the decoder) becomes '?'.
        data = text.encode("utf-8", "replace")
        room = self.cap_bytes - self.kept
        if len(data) > room:
            cut = utf8_prefix(data, room)
            self.drop(len(data) - cut)
            data = data[:cut]
        if data:
            self._buffer.append(data)
            self._buffered += len(data)
            self.kept += len(data)
            self._last = data[-1:]
        if self._buffered >= FLUSH_BYTES:
            self._wake.set()

    def note(self, text: str) -> None:
        """Write one of deployster's own lines (``[deployster] …``, a command's
        header): on a line of its own, even after output with no final newline."""
        self.write(text if self._last == b"\n" else "\n" + text)

    def close_with(self, text: str) -> None:
        """The line ``close`` writes last, after the truncation marker if any:
        how the job ended. Never dropped by the cap (it is one short line)."""
        self._closing = text.encode("utf-8", "replace")

    def drop(self, size: int) -> None:
        """Count ``size`` bytes of output as dropped (over the cap), unwritten."""
        if size > 0:
            self.dropped += size
            self.full = True

    async def flush(self) -> None:
        """Append what is buffered; on a Redis error keep it and re-raise."""
        async with self._flush_lock:
            if self._unsent is not None:
                await self._send(self._unsent)
            if self._buffer and not self.stale:
                data = b"".join(self._buffer)
                self._buffer, self._buffered = [], 0
                self._seq += 1
                await self._send(
                    _Batch(f"{self._writer_id}:{self._seq}", entry_chunks(data), len(data))
                )

    async def _send(self, batch: _Batch) -> None:
        """One append.lua call; on a Redis error the batch stays ``_unsent``."""
        if self.stale:
            self._unsent = None
            return
        self._unsent = batch
        result = await self.scripts.append(
            job_id=self.job_id, fence="" if self.fence is None else self.fence,
            maxlen=MAXLEN, now_ms=now_ms(), batch=batch.id, expect=self._offset,
            chunks=batch.chunks,
        )
        self._unsent = None
        if not result:
            self.stale = True
            self._buffer, self._buffered = [], 0
            return
        self._offset = int(result) - 1
        self.written += batch.size

    async def _flush_loop(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closed:  # close() sends the rest with the closing line: one append
                return
            try:
                await self.flush()
            except REDIS_DOWN as exc:  # kept to send again; the job goes on
                log.warning("log of %s: Redis unavailable (%s); buffering", self.key, exc)
                await asyncio.sleep(FLUSH_INTERVAL * 10)

    async def close(self) -> None:
        """Flush everything, with the truncation marker if the cap was hit."""
        if self._closed:
            return
        await self._end_writing()
        await self._flush_all()

    async def seal(self) -> LastBatch | None:
        """Close, but leave the last batch to whoever records the job's end
        (``finish.lua`` appends it first, in the same step: a round trip less
        on every hand-off). Returns that batch; None when nothing is left, or
        when an earlier batch's fate is unknown (a lost reply) or the writer is
        fenced out: then everything is flushed here, as ``close`` does."""
        if self._closed:
            return None
        await self._end_writing()
        if self._unsent is not None or self.stale:
            await self._flush_all()
            return None
        if not self._buffer:
            return None
        data = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        self._seq += 1
        return LastBatch(f"{self._writer_id}:{self._seq}", entry_chunks(data), self._offset)

    async def _end_writing(self) -> None:
        """Stop the flusher; buffer what is left: the decoder's tail, the
        truncation marker if the cap was hit, the closing line."""
        self._closed = True
        self._wake.set()
        if self._flusher is not None:
            try:
                await self._flusher
            except Exception:  # the final flush below reports the problem
                pass
        self.write(self._decoder.decode(b"", final=True))
        if self.dropped and not self.stale:
            marker = (
                f"\n[deployster] output truncated: {human_bytes(self.dropped)} over the "
                f"{human_bytes(self.cap_bytes)} log cap were dropped\n"
            ).encode()
            self._buffer.append(marker)  # past the cap: the one line allowed there
            self._buffered += len(marker)
            self._last = b"\n"
        if self._closing is not None and not self.stale:
            closing = self._closing if self._last == b"\n" else b"\n" + self._closing
            self._buffer.append(closing)  # with the marker, the only bytes over the cap
            self._buffered += len(closing)

    async def _flush_all(self) -> None:
        """Flush what is buffered, retrying through a Redis outage for up to
        ``CLOSE_RETRY_FOR`` seconds; then it is reported lost."""
        deadline = time.monotonic() + CLOSE_RETRY_FOR
        while True:
            try:
                await self.flush()
                return
            except REDIS_DOWN as exc:
                if time.monotonic() > deadline:
                    unsent = self._buffered + (self._unsent.size if self._unsent else 0)
                    log.error("log of %s: Redis unavailable for %ss; %s lost (%s)", self.key,
                              CLOSE_RETRY_FOR, human_bytes(unsent), exc)
                    return
                await asyncio.sleep(0.5)


async def read_log(
    redis: Redis, keys: Keys, job_id: str, *, after: str = "0-0", page: int = 1000
) -> AsyncIterator[tuple[str, str]]:
    """Yield (stream id, text) for every entry after ``after``."""
    key = keys.log(job_id)
    start = f"({after}" if after != "0-0" else "-"
    while True:
        entries = cast(
            list[tuple[str, dict[str, str]]],
            await redis.xrange(key, min=start, max="+", count=page),
        )
        for entry_id, fields in entries:
            yield entry_id, fields.get("d", "")
        if len(entries) < page:
            return
        start = f"({entries[-1][0]}"


async def read_full_log(redis: Redis, keys: Keys, job_id: str) -> str:
    return "".join([text async for _, text in read_log(redis, keys, job_id)])


async def read_tail(redis: Redis, keys: Keys, job_id: str, max_chars: int,
                    *, page: int = 8) -> str | None:
    """The last ``max_chars`` characters (at least) of the live stream, read
    from its end a few entries at a time; None when there is no stream."""
    key = keys.log(job_id)
    parts: list[str] = []
    size = 0
    top = "+"
    while size < max_chars:
        entries = cast(list[tuple[str, dict[str, str]]],
                       await redis.xrevrange(key, max=top, min="-", count=page))
        for entry_id, fields in entries:
            text = fields.get("d", "")
            parts.append(text)
            size += len(text)
            top = f"({entry_id}"
        if len(entries) < page:
            break
    if not parts and not await redis.exists(key):
        return None
    return "".join(reversed(parts))[-max_chars:]


async def stream_end(redis: Redis, keys: Keys, job_id: str) -> int | None:
    """Where the live stream ends: the byte offset after its last entry (the
    log's length so far); None when there is no stream (no output yet, or
    Redis has let it go)."""
    last = cast(
        list[tuple[str, dict[str, str]]],
        await redis.xrevrange(keys.log(job_id), max="+", min="-", count=1),
    )
    if not last:
        return None
    entry_id, fields = last[0]
    return entry_offset(entry_id) + len(fields.get("d", "").encode("utf-8"))
