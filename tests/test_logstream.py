"""A job's log as a Redis stream (SPEC §6): batched writes, the byte cap and its
marker, UTF-8 across chunk boundaries, and reading from a stream id."""

from __future__ import annotations

import asyncio

from deployster.ids import new_job_id
from deployster.logstream import LogWriter, human_bytes, read_full_log, read_log
from deployster.service import Deployster

BIG_CAP = 50 * 1024 * 1024


async def entries(core: Deployster, job_id: str) -> int:
    return int(await core.redis.xlen(core.keys.log(job_id)))


async def test_many_small_writes_become_few_stream_entries(core: Deployster) -> None:
    job_id = new_job_id()
    writes = 3000
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        for i in range(writes):
            log.write(f"line {i}\n")
            await asyncio.sleep(0)  # let the flusher run whenever it wants to
    text = await read_full_log(core.redis, core.keys, job_id)
    assert text == "".join(f"line {i}\n" for i in range(writes))
    count = await entries(core, job_id)
    assert 1 <= count <= writes // 20, count


async def test_a_flush_happens_while_the_writer_is_open(core: Deployster) -> None:
    """Readers see output while the job runs, not only at the end."""
    job_id = new_job_id()
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        log.write("early\n")
        for _ in range(200):
            if await read_full_log(core.redis, core.keys, job_id):
                break
            await asyncio.sleep(0.05)
        seen = await read_full_log(core.redis, core.keys, job_id)
        log.write("late\n")
    assert seen == "early\n"
    assert await read_full_log(core.redis, core.keys, job_id) == "early\nlate\n"


async def test_large_output_is_split_into_bounded_entries(core: Deployster) -> None:
    job_id = new_job_id()
    payload = "".join(f"{i:09d}\n" for i in range(100_000))  # 1,000,000 bytes
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        log.write(payload)
    assert await read_full_log(core.redis, core.keys, job_id) == payload
    sizes = [len(text.encode()) async for _, text in read_log(core.redis, core.keys, job_id)]
    assert len(sizes) > 1 and max(sizes) <= 64 * 1024


async def test_the_byte_cap_drops_the_rest_with_a_marker_saying_how_much(
    core: Deployster,
) -> None:
    job_id = new_job_id()
    line = "x" * 100 + "\n"  # 101 bytes
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=1000) as log:
        for _ in range(50):  # 5050 bytes
            log.write(line)
    text = await read_full_log(core.redis, core.keys, job_id)
    kept, _, marker = text.partition("\n[deployster] ")
    assert kept.encode() == (line * 50).encode()[:1000]
    assert log.dropped == 5050 - 1000
    assert marker == (
        "output truncated: 4.0 KB over the 1000 bytes log cap were dropped\n"
    )
    assert human_bytes(4050) == "4.0 KB"


async def test_the_cap_never_splits_a_multibyte_character(core: Deployster) -> None:
    job_id = new_job_id()
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=11) as log:
        log.write("é" * 10)  # 20 bytes; 11 would cut the sixth é in half
    text = await read_full_log(core.redis, core.keys, job_id)
    assert text.startswith("ééééé\n[deployster] output truncated: 10 bytes over")
    assert "\ufffd" not in text


async def test_no_marker_when_nothing_was_dropped(core: Deployster) -> None:
    job_id = new_job_id()
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=10) as log:
        log.write("0123456789")  # exactly the cap
    assert await read_full_log(core.redis, core.keys, job_id) == "0123456789"


async def test_utf8_split_across_chunks_decodes_correctly(core: Deployster) -> None:
    job_id = new_job_id()
    e_acute = "é".encode()
    snake = "🐍".encode()  # four bytes
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        log.write_bytes(b"caf" + e_acute[:1])
        await log.flush()  # the first half is already in Redis's past
        log.write_bytes(e_acute[1:] + b" ")
        for byte in snake:
            log.write_bytes(bytes([byte]))
            await log.flush()
        log.write_bytes(b"\n")
    text = await read_full_log(core.redis, core.keys, job_id)
    assert text == "café 🐍\n"


async def test_invalid_utf8_is_replaced_not_fatal(core: Deployster) -> None:
    job_id = new_job_id()
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        log.write_bytes(b"ok \xff\xfe end\n")
        log.write_bytes("é".encode()[:1])  # a truncated char at the very end
    text = await read_full_log(core.redis, core.keys, job_id)
    assert text.startswith("ok ") and " end\n" in text
    assert text.count("\ufffd") == 3


async def test_read_log_after_an_id_returns_only_later_entries(core: Deployster) -> None:
    job_id = new_job_id()
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        for part in ("one\n", "two\n", "three\n"):
            log.write(part)
            await log.flush()
    got = [(i, t) async for i, t in read_log(core.redis, core.keys, job_id)]
    assert [t for _, t in got] == ["one\n", "two\n", "three\n"]
    ids = [i for i, _ in got]
    after_first = [t async for _, t in read_log(core.redis, core.keys, job_id, after=ids[0])]
    assert after_first == ["two\n", "three\n"]
    after_last = [t async for _, t in read_log(core.redis, core.keys, job_id, after=ids[-1])]
    assert after_last == []
    # Paging does not lose or repeat entries.
    paged = [t async for _, t in read_log(core.redis, core.keys, job_id, page=2)]
    assert paged == ["one\n", "two\n", "three\n"]
    paged_after = [
        t async for _, t in read_log(core.redis, core.keys, job_id, after=ids[0], page=1)
    ]
    assert paged_after == ["two\n", "three\n"]


async def test_reading_does_not_consume(core: Deployster) -> None:
    job_id = new_job_id()
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        log.write("kept\n")
    first = await read_full_log(core.redis, core.keys, job_id)
    second = await read_full_log(core.redis, core.keys, job_id)
    assert first == second == "kept\n"


async def test_entry_ids_are_byte_offsets_and_entries_carry_a_time(core: Deployster) -> None:
    """An entry's id is ``<offset of its first byte in the whole log>-1``; a second
    writer (recovery's closing line) continues the numbering."""
    from deployster import logstream

    job_id = new_job_id()
    before = logstream.now_ms()
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        for part in ("héllo\n", "🐍 two\n", "three"):
            log.write(part)
            await log.flush()
    end = await logstream.append(core.redis, core.keys, job_id, "\nclosing line\n", "")
    full = "héllo\n🐍 two\nthree\nclosing line\n"
    assert end == len(full.encode())
    raw = await core.redis.xrange(core.keys.log(job_id))
    offsets = [logstream.entry_offset(i) for i, _ in raw]
    assert [i.split("-")[1] for i, _ in raw] == ["1"] * 4
    data = full.encode()
    for (_, fields), offset in zip(raw, offsets, strict=True):
        assert data[offset:].startswith(fields["d"].encode())
        assert before <= int(fields["t"]) <= logstream.now_ms()
    assert offsets[0] == 0 and offsets[-1] == len("héllo\n🐍 two\nthree".encode())


async def test_a_fenced_out_writer_appends_nothing(core: Deployster) -> None:
    job_id = new_job_id()
    await core.redis.hset(core.keys.job(job_id), mapping={"status": "running", "fence": "2"})
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP, fence=1) as stale:
        stale.write("stale\n")
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP, fence=2) as log:
        log.write("current\n")
    assert stale.stale
    assert await read_full_log(core.redis, core.keys, job_id) == "current\n"


async def test_read_stream_from_any_byte_offset(core: Deployster) -> None:
    """A cursor inside an entry slices it; inside a character skips to the next;
    pages are bounded and ``next`` continues exactly."""
    from deployster.logs import read_stream

    job_id = new_job_id()
    parts = ["día 1\n", "x" * 100, "ünï\n", "end"]
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        for part in parts:
            log.write(part)
            await log.flush()
    data = "".join(parts).encode()
    key = core.keys.log(job_id)
    for start in range(len(data) + 3):
        got = await read_stream(core.redis, key, start)
        assert got is not None and got.at_end and got.next == max(start, len(data))
        boundary = start >= len(data) or data[start] & 0xC0 != 0x80
        if boundary:
            assert got.text.encode() == data[start:]
        else:
            assert data[start:].endswith(got.text.encode())
            assert len(got.text.encode()) == len(data) - start - 1
    # Small pages, concatenated, are the whole log.
    cursor, texts = 0, []
    while True:
        page = await read_stream(core.redis, key, cursor, max_bytes=7)
        assert page is not None
        assert len(page.text.encode()) <= 7
        texts.append(page.text)
        cursor = page.next
        if page.at_end:
            break
    assert "".join(texts).encode() == data
    assert await read_stream(core.redis, core.keys.log(new_job_id()), 0) is None
