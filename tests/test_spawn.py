"""Starting a job's processes (``deployster/spawn.py``): exit statuses,
output, a background child holding the pipe, cancellation, and many at once
— real processes throughout."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from deployster import procgroups
from deployster.spawn import spawn


def _env(marker: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DEPLOYSTER_JOB_ID": marker}


async def test_output_and_exit_status(tmp_path: Path) -> None:
    # /proc/self/stat's 5th field: the process group (the shell's own: pgid == pid).
    script = "pwd; echo oops >&2; cut -d' ' -f5 /proc/$$/stat; exit 3"
    child = await spawn(["/bin/sh", "-c", script], cwd=str(tmp_path), env=_env("x"))
    assert child.stdout is not None
    out = await child.stdout.read()
    assert await child.wait() == 3 and child.returncode == 3
    assert out.decode().splitlines() == [str(tmp_path), "oops", str(child.pid)]


async def test_stderr_can_be_left_out(tmp_path: Path) -> None:
    child = await spawn(["/bin/sh", "-c", "echo out; echo err >&2"], cwd=str(tmp_path),
                        env=_env("x"), merge_stderr=False)
    assert child.stdout is not None
    assert await child.stdout.read() == b"out\n"
    assert await child.wait() == 0


async def test_wait_does_not_wait_for_a_background_child_holding_the_pipe(
    tmp_path: Path,
) -> None:
    marker = uuid.uuid4().hex
    child = await spawn(["/bin/sh", "-c", "sleep 30 & echo started"], cwd=str(tmp_path),
                        env=_env(marker))
    try:
        assert await asyncio.wait_for(child.wait(), 10) == 0
        assert child.stdout is not None
        assert await child.stdout.readline() == b"started\n"
        assert procgroups.members(child.pid)  # the sleep still holds the pipe
    finally:
        procgroups.kill_group(child.pid, 9)
        child.close_output()


async def test_a_missing_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        await spawn(["/bin/sh", "-c", "true"], cwd=str(tmp_path / "gone"), env=_env("x"))


async def test_a_spawn_cancelled_midway_leaves_no_process(tmp_path: Path) -> None:
    # Cancelled at every point of its way (before it started, while the pipe
    # is connected, just after): no process of it may stay behind.
    marker = uuid.uuid4().hex
    for delay in (0, 0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02):
        task = asyncio.create_task(spawn(["sleep", "30"], cwd=str(tmp_path),
                                         env=_env(marker)))
        await asyncio.sleep(delay)
        task.cancel()
        child = None
        try:
            child = await task
        except asyncio.CancelledError:
            pass
        if child is not None:  # it finished before the cancel: ours to end
            procgroups.kill_group(child.pid, 9)
            await child.wait()
            child.close_output()
    for _ in range(100):  # a killed process is gone within moments
        if not procgroups.job_groups(marker):
            break
        await asyncio.sleep(0.05)
    assert procgroups.job_groups(marker) == set()


async def test_many_at_once(tmp_path: Path) -> None:
    children = await asyncio.gather(*(
        spawn(["/bin/sh", "-c", f"echo {i}; exit {i % 7}"], cwd=str(tmp_path), env=_env("x"))
        for i in range(60)))
    for i, child in enumerate(children):
        assert child.stdout is not None
        assert await child.stdout.read() == f"{i}\n".encode()
        assert await child.wait() == i % 7
