"""A job's output as a Redis stream: one entry per chunk, any number of readers.

The runner appends through a ``LogWriter``, which batches chunks (a flush every
50 ms or 256 KiB, one pipeline per flush) so a chatty build costs a handful of
round trips, not one per line. Past the per-job byte cap the rest is dropped
and a marker line says how much — never silently. Readers (the /status cursor,
history, the dashboard) read by stream id and never consume anything.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator
from typing import cast

from .keys import Keys
from .redis_conn import Redis

ENTRY_BYTES = 64 * 1024  # upper bound of one stream entry
FLUSH_BYTES = 256 * 1024
FLUSH_INTERVAL = 0.05
# Backstop for the stream's length: the byte cap is what normally bounds it.
MAXLEN = 100_000


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


class LogWriter:
    """Buffers a job's output and appends it to the job's stream in batches."""

    def __init__(self, redis: Redis, keys: Keys, job_id: str, *, cap_bytes: int) -> None:
        self.redis = redis
        self.key = keys.log(job_id)
        self.cap_bytes = cap_bytes
        self.written = 0
        self.dropped = 0
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
        async with self._flush_lock:
            if not self._buffer:
                return
            data = "".join(self._buffer)
            self._buffer.clear()
            self.written += self._buffered
            self._buffered = 0
            async with self.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(data), ENTRY_BYTES):
                    pipe.xadd(
                        self.key, {"d": data[start : start + ENTRY_BYTES]},
                        maxlen=MAXLEN, approximate=True,
                    )
                await pipe.execute()

    async def _flush_loop(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

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
        await self.flush()


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
