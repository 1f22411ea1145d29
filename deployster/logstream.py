"""A job's output as a Redis stream: one entry per chunk, any number of readers.

The runner appends through a ``LogWriter``, which batches chunks (a flush every
50 ms or 256 KiB, one script call per flush) so a chatty build costs a handful of
round trips, not one per line. Past the per-job byte cap the rest is dropped
and a marker line says how much — never silently. Readers (the /status cursor,
history, the dashboard, the log API) read by stream id and never consume anything.

An entry's id is ``<byte offset>-1``: where its text starts in the job's whole
log (see ``_APPEND``), so a stream id, an API log cursor and a byte position in
the history copy are one and the same number.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
from collections.abc import AsyncIterator
from typing import cast

from .keys import Keys
from .redis_conn import REDIS_DOWN, Redis

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


# Every entry's id is ``<offset>-1``: the byte offset of its first byte in the
# job's whole log (the concatenation of every entry's ``d``, UTF-8), so an id is
# also a cursor into the history copy of the log, byte for byte. (Sequence 1
# because Redis refuses the id 0-0.) The offset is computed here, from the last
# entry, so any number of writers (the runner, recovery's closing line) continue
# one numbering without sharing state. Each entry also carries ``t``, the epoch
# milliseconds it was written at.
#
# With a fence, append only while the job is still running under the writer's
# fence: a stale runner (its job already ended by whoever took the lock over)
# writes nothing.
# KEYS: job record, job log. ARGV: fence ('' for none), maxlen, now_ms, chunk...
# Returns 0 when fenced out, else 1 + the log's length in bytes.
_APPEND = """
if ARGV[1] ~= '' then
  local st = redis.call('HMGET', KEYS[1], 'status', 'fence')
  if st[1] ~= 'running' or st[2] ~= ARGV[1] then return 0 end
end
local offset = 0
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if last then
  offset = tonumber(string.match(last[1], '^(%d+)'))
  local f = last[2]
  for j = 1, #f, 2 do
    if f[j] == 'd' then offset = offset + #f[j + 1] end
  end
end
for i = 4, #ARGV do
  local chunk = ARGV[i]
  if #chunk > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], offset .. '-1', 'd', chunk, 't', ARGV[3])
    offset = offset + #chunk
  end
end
return 1 + offset
"""


def entry_offset(entry_id: str) -> int:
    """The byte offset an entry starts at (the ms part of its id)."""
    return int(entry_id.split("-", 1)[0])


def now_ms() -> int:
    return int(time.time() * 1000)


async def append(redis: Redis, keys: Keys, job_id: str, *chunks: str) -> int:
    """Append ``chunks`` unfenced (a closing line written by someone else than
    the runner); returns the log's length in bytes afterwards."""
    script = redis.register_script(_APPEND)
    return int(await script(keys=[keys.job(job_id), keys.log(job_id)],
                            args=["", MAXLEN, now_ms(), *chunks])) - 1


# How long close() keeps retrying its last flush while Redis is unreachable.
CLOSE_RETRY_FOR = 60.0


class LogWriter:
    """Buffers a job's output and appends it to the job's stream in batches.

    With ``fence`` set, every append is checked against the job's record (see
    ``_FENCED_APPEND``). While Redis is unreachable the output stays buffered
    (bounded by the cap) and goes out with the next successful flush.
    """

    def __init__(
        self, redis: Redis, keys: Keys, job_id: str, *, cap_bytes: int, fence: int | None = None
    ) -> None:
        self.redis = redis
        self.key = keys.log(job_id)
        self.job_key = keys.job(job_id)
        self.cap_bytes = cap_bytes
        self.fence = fence
        self.written = 0
        self.dropped = 0
        self.stale = False
        self._append = redis.register_script(_APPEND)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer: list[str] = []
        self._buffered = 0
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
        self.write(self._decoder.decode(data))

    def write(self, text: str) -> None:
        if not text:
            return
        if "\x00" in text:
            # PostgreSQL text cannot hold NUL: one job printing it made every
            # history batch fail, for all jobs, forever (issue #5 review). Done
            # here, so the stream and the history copy stay byte for byte alike.
            text = text.replace("\x00", NUL_REPLACEMENT)
        size = len(text.encode("utf-8", "surrogatepass"))
        room = self.cap_bytes - self.written - self._buffered
        if room <= 0:
            self.dropped += size
            return
        if size > room:
            cut = text.encode("utf-8")[:room].decode("utf-8", "ignore")
            self.dropped += size - len(cut.encode("utf-8"))
            text, size = cut, len(cut.encode("utf-8"))
        self._buffer.append(text)
        self._buffered += size
        if self._buffered >= FLUSH_BYTES:
            self._wake.set()

    async def flush(self) -> None:
        """Append what is buffered; on a Redis error keep it and re-raise."""
        async with self._flush_lock:
            if not self._buffer:
                return
            data, size = "".join(self._buffer), self._buffered
            self._buffer, self._buffered = [], 0
            chunks = [data[i : i + ENTRY_BYTES] for i in range(0, len(data), ENTRY_BYTES)]
            try:
                if self.stale:
                    return
                fence = "" if self.fence is None else self.fence
                if not await self._append(
                    keys=[self.job_key, self.key], args=[fence, MAXLEN, now_ms(), *chunks]
                ):
                    self.stale = True
                    return
            except REDIS_DOWN:
                self._buffer.insert(0, data)
                self._buffered += size
                raise
            self.written += size

    async def _flush_loop(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except REDIS_DOWN as exc:  # kept in the buffer; the job goes on
                log.warning("log of %s: Redis unavailable (%s); buffering", self.key, exc)
                await asyncio.sleep(FLUSH_INTERVAL * 10)

    async def close(self) -> None:
        """Flush everything, with the truncation marker if the cap was hit."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._flusher is not None:
            try:
                await self._flusher
            except Exception:  # the final flush below reports the problem
                pass
        self.write(self._decoder.decode(b"", final=True))
        if self.dropped:
            marker = (
                f"\n[deployster] output truncated: {human_bytes(self.dropped)} over the "
                f"{human_bytes(self.cap_bytes)} log cap were dropped\n"
            )
            self._buffer.append(marker)
            self._buffered += len(marker.encode("utf-8"))
        deadline = time.monotonic() + CLOSE_RETRY_FOR
        while True:
            try:
                await self.flush()
                return
            except REDIS_DOWN as exc:
                if time.monotonic() > deadline:
                    log.error("log of %s: Redis unavailable for %ss; %s lost (%s)", self.key,
                              CLOSE_RETRY_FOR, human_bytes(self._buffered), exc)
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
