"""A job's log as a Redis stream (docs/redis.md#the-log-stream): batched writes,
the byte cap and its marker, UTF-8 across chunk boundaries, and reading from a
stream id."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import httpx
import pytest

from deployster import logstream
from deployster.ids import new_job_id
from deployster.logreader import read_stream
from deployster.logstream import LogWriter, human_bytes, read_full_log, read_log
from deployster.models import JobStatus
from deployster.redis_conn import REDIS_DOWN, redis_from_url
from deployster.redis_scripts import APPEND
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, history_log, wait_for_status
from tests.helpers.redis_proxy import RedisProxy, script
from tests.helpers.server import LiveServer, start_server

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


async def test_entries_are_bounded_in_bytes_not_characters(core: Deployster) -> None:
    job_id = new_job_id()
    payload = "é" * 100_000 + "🐍" * 50_000  # 400,000 bytes in 150,000 characters
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        log.write(payload)
    assert await read_full_log(core.redis, core.keys, job_id) == payload
    sizes = [len(text.encode()) async for _, text in read_log(core.redis, core.keys, job_id)]
    assert sum(sizes) == 400_000 and max(sizes) <= 64 * 1024


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


async def test_once_something_is_dropped_later_output_is_dropped_too(core: Deployster) -> None:
    """The byte a character did not fit in is not filled by later output: what
    is kept is always the start of the output."""
    job_id = new_job_id()
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=11) as log:
        log.write("é" * 6)  # 12 bytes: five fit, the sixth does not
        log.write("a")
    text = await read_full_log(core.redis, core.keys, job_id)
    assert text == "ééééé\n[deployster] output truncated: 3 bytes over the 11 bytes log cap " \
        "were dropped\n"


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


# ------------------------------------------------------------ the byte cap, served


def marker_pattern(cap: int) -> str:
    return (r"\n\[deployster\] output truncated: \d+(\.\d)? (bytes|KB|MB|GB) over the "
            + re.escape(human_bytes(cap)) + r" log cap were dropped\n")


async def served_log(client: httpx.AsyncClient, job_id: str) -> str:
    """The job's whole log as ``GET /jobs/<id>/logs`` pages it out, once it ended."""
    await wait_for_status(client, job_id, timeout=60)
    cursor, parts = 0, []
    while True:
        page = (await client.get(f"/jobs/{job_id}/logs", params={"from": cursor})).json()
        parts.append(page["logs"])
        cursor = page["next"]
        if page["finished"]:
            return "".join(parts)


async def test_a_served_job_printing_4_mib_fast_keeps_at_most_the_cap_and_the_marker(
    core: Deployster, settings: Settings, project_dir: Path, tmp_path: Path
) -> None:
    """Output arriving while a batch is in flight counts against the cap too.
    The job's output goes through the masker (a stage secret) on its way."""
    cap = 1024 * 1024
    pipeline = [{"stage_name": "Production", "git_branch": "main",
                 "environment_variables": [{"key": "API_KEY", "value": "s3cr3t-v4lue"}]}]
    await core.projects.add(str(project_dir), pipeline=pipeline)
    live = start_server(settings, tmp_path / "server.log",
                        extra_env={"DEPLOYSTER_LOG_CAP_BYTES": str(cap)})
    command = "yes 0123456789abcdef-s3cr3t-v4lue | head -c 4194304"
    try:
        async with live.client() as client:
            reply = await client.post("/deploy", json=deploy_body(project_dir, command))
            job_id = reply.json()["job_id"]
            text = await served_log(client, job_id)
    finally:
        live.stop()
    stored = await history_log(core, job_id)
    assert stored == text
    kept, marker = re.split(r"(?=\n\[deployster\] output truncated)", text)
    # The closing line comes after the marker: how the job ended is never cut.
    marker, closing = re.split(r"(?<=dropped\n)", marker)
    assert re.fullmatch(r"\[deployster\] job complete in [\d.]+s\n", closing), closing
    assert re.fullmatch(marker_pattern(cap), marker), marker
    size = len(text.encode())
    assert size <= cap + len(marker.encode()) + len(closing.encode()), (
        f"{size} bytes stored for a {cap}-byte cap")
    assert len(kept.encode()) > cap - 64  # not far below it either
    # What was kept is the start of the job's (masked) output, nothing repeated.
    body = kept.partition("| head -c 4194304\n")[2]
    lines = len(body) // 21
    assert body and "0123456789abcdef-***\n" * lines == body[: lines * 21]
    # The marker counts what the job printed past what was kept (30 bytes a line
    # before masking), give or take the chunk the cap fell in.
    dropped = float(re.findall(r"truncated: ([\d.]+) MB", marker)[0])
    assert abs(dropped - (4194304 - lines * 30) / 1024**2) < 0.1, marker


async def test_output_written_during_a_flush_counts_against_the_cap(core: Deployster) -> None:
    job_id = new_job_id()
    cap = 300 * 1024
    chunk = ("y" * 1023 + "\n") * 64  # 64 KiB, as the runner reads them
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=cap) as log:
        for _ in range(64):  # 4 MiB
            log.write(chunk)
            await asyncio.sleep(0)  # the flusher takes the buffer, awaits Redis...
    text = await read_full_log(core.redis, core.keys, job_id)
    kept, marker = re.split(r"(?=\n\[deployster\] output truncated)", text)
    assert kept.encode() == (chunk * 64).encode()[:cap]
    assert re.fullmatch(marker_pattern(cap), marker), marker
    assert log.dropped == 4 * 1024 * 1024 - cap


# ------------------------------------------- appends are idempotent (lost replies)


def numbered(count: int) -> str:
    return "".join(f"line {i:05d}\n" for i in range(1, count + 1))


async def test_a_batch_whose_reply_was_lost_is_appended_once(
    core: Deployster, redis_url: str
) -> None:
    """Redis ran the append, the reply never came: redis-py's own retry (one lost
    reply) and the writer's (three: redis-py gives up) must not append it again."""
    job_id = new_job_id()
    with RedisProxy(redis_url) as proxy:
        client = redis_from_url(proxy.url)
        # Not entered: no background flusher, the test decides when to flush.
        log = LogWriter(client, core.keys, job_id, cap_bytes=BIG_CAP)
        try:
            for times in (1, 3, 1):
                trap = proxy.lose_reply(script(APPEND.source), times=times)
                log.write(f"batch for {times}\n")
                with pytest.raises(REDIS_DOWN) if times == 3 else contextlib.nullcontext():
                    await log.flush()
                assert trap.wait(5) and trap.fired == times
                await log.flush()
            await log.close()
        finally:
            await client.aclose()
    text = await read_full_log(core.redis, core.keys, job_id)
    assert text == "batch for 1\nbatch for 3\nbatch for 1\n"


async def test_a_lost_reply_then_someone_elses_append_neither_repeats_nor_blocks(
    core: Deployster, redis_url: str
) -> None:
    """Recovery's closing line lands between the lost reply and the retry: the
    batch is not appended again, and the writer goes on after that line."""
    job_id = new_job_id()
    with RedisProxy(redis_url) as proxy:
        client = redis_from_url(proxy.url)
        try:
            log = LogWriter(client, core.keys, job_id, cap_bytes=BIG_CAP)
            log.write("one\n")
            await log.flush()
            trap = proxy.lose_reply(script(APPEND.source), times=3)
            log.write("two\n")
            with pytest.raises(REDIS_DOWN):
                await log.flush()
            assert trap.fired == 3
            await logstream.append(core.redis, core.keys, job_id, "closing\n")
            await log.flush()
            log.write("three\n")
            await log.close()
        finally:
            await client.aclose()
    assert await read_full_log(core.redis, core.keys, job_id) == "one\ntwo\nclosing\nthree\n"
    entries = cast(list[tuple[str, dict[str, str]]],
                   await core.redis.xrange(core.keys.log(job_id)))
    ids = [entry_id for entry_id, _ in entries]
    assert [logstream.entry_offset(i) for i in ids] == [0, 4, 8, 16]


async def test_a_closing_line_sent_again_is_not_repeated(core: Deployster, redis_url: str) -> None:
    """Recovery's line: redis-py retries it after a lost reply, and recovery may
    end the same job again when recording its end failed the first time."""
    job_id = new_job_id()
    async with LogWriter(core.redis, core.keys, job_id, cap_bytes=BIG_CAP) as log:
        log.write("output\n")
    with RedisProxy(redis_url) as proxy:
        client = redis_from_url(proxy.url)
        try:
            trap = proxy.lose_reply(script(APPEND.source))
            end = await logstream.append(client, core.keys, job_id, "\n[deployster] job ended\n")
            assert trap.fired == 1
        finally:
            await client.aclose()
    again = await logstream.append(core.redis, core.keys, job_id, "\n[deployster] job ended\n")
    full = "output\n\n[deployster] job ended\n"
    assert end == again == len(full)
    assert await read_full_log(core.redis, core.keys, job_id) == full


# The job for the served fault tests: numbered lines for a few seconds.
LINES = 5000
PRINTER = (f"{sys.executable} -u -c \"import time; [(print(f'line {{i:05d}}'), "
           f"time.sleep(0.0012)) for i in range(1, {LINES + 1})]\"")


def job_output(log: str) -> str:
    """What the command printed, between its header line and the next command's;
    every line deployster wrote around it is there once."""
    before, header, rest = log.partition("[1/2] $ ")
    out, header2, after = rest.partition("\n")[2].partition("[2/2] $ ")
    assert header and header2, log[-2000:]
    assert before.startswith("[deployster] job ") and before.count("\n") == 1, before
    # Before the last command: supervisor's reread and update, as steps of their own.
    out, steps, updates = out.partition("[deployster] $ supervisorctl reread\n")
    assert steps and re.fullmatch(r"supervisorctl: reread\n"
                                  r"\[deployster\] \$ supervisorctl update my-app--main\n"
                                  r"supervisorctl: update my-app--main\n", updates), updates
    assert re.fullmatch(r"supervisorctl restart my-app--main\n"
                        r"supervisorctl: restart my-app--main\n"
                        r"\[deployster\] waiting for my-app--main to be RUNNING .*\n"
                        r"\[deployster\] restart verified: my-app--main +RUNNING .*\n"
                        r"\[deployster\] job complete in \d+\.\ds\n", after), after
    return out


async def run_printer(core: Deployster, live: LiveServer, project_dir: Path,
                      faults: Callable[[], Awaitable[None]]) -> tuple[str, str]:
    """Deploy ``PRINTER``, run ``faults`` once its output flows, return its log
    via HTTP and from the SQL history."""
    await core.projects.add(str(project_dir))
    async with live.client() as client:
        reply = await client.post("/deploy", json=deploy_body(project_dir, PRINTER))
        job_id = reply.json()["job_id"]
        deadline = time.monotonic() + 20
        while "line 00100" not in await read_full_log(core.redis, core.keys, job_id):
            assert time.monotonic() < deadline, "no output"
            await asyncio.sleep(0.02)
        await faults()
        job = await core.jobs.get(job_id)
        assert job is not None and job.status is JobStatus.RUNNING, \
            "the job ended before the faults were over: make it print for longer"
        text = await served_log(client, job_id)
        status = (await client.get(f"/jobs/{job_id}")).json()["status"]
    assert status == "complete"
    return text, await history_log(core, job_id)


async def test_lost_replies_to_the_append_script_neither_lose_nor_repeat_a_line(
    core: Deployster, proxied: tuple[LiveServer, RedisProxy], project_dir: Path
) -> None:
    live, proxy = proxied
    append = script(APPEND.source)

    async def faults() -> None:
        for times in (1, 1, 3, 1, 3):  # 3: redis-py's retries give up, the writer's go on
            trap = proxy.lose_reply(append, times=times)
            assert await asyncio.to_thread(trap.wait, 10)
            await asyncio.sleep(0.1)
        # Every reply lost for a second: each retry runs and is unanswered too.
        window = proxy.lose_replies(append, 1.0)
        assert await asyncio.to_thread(window.wait, 5)

    text, stored = await run_printer(core, live, project_dir, faults)
    assert job_output(text) == numbered(LINES)
    assert stored == text


async def test_cutting_every_redis_connection_for_a_second_loses_and_repeats_nothing(
    core: Deployster, proxied: tuple[LiveServer, RedisProxy], project_dir: Path
) -> None:
    live, proxy = proxied

    async def faults() -> None:
        for _ in range(2):
            proxy.cut_all(1.0)
            await asyncio.sleep(1.3)

    text, stored = await run_printer(core, live, project_dir, faults)
    assert job_output(text) == numbered(LINES)
    assert stored == text
