"""Starting a job's processes with as little of the event loop's time as it takes.

``asyncio.create_subprocess_exec`` in Python 3.11 starts a new thread per
child to wait for it (the default child watcher) on top of the fork/exec;
under load that was a quarter of the loop's time, and it sat on every
hand-off from one queued job to the next (``bench/handoff.py``). Here:

- the fork/exec is ``subprocess.Popen``'s vfork in the loop's own thread,
  which stops the loop only until the child has exec'd (0.2-0.5 ms here);
- the child's exit is watched on the loop through a pidfd (Linux 5.3+;
  elsewhere a thread waits), no thread per child;
- its output is a plain ``asyncio.StreamReader``.

The fork/exec once ran on a thread pool instead, and that was slower without
sparing the loop (``bench/spawn.py``, both ways in one run): the loop's
longest gap was about the same (the pool's thread holds the GIL through
``fork_exec`` until the child's exec), but each of ``Popen``'s GIL
re-acquisitions in the thread waited for the loop to let go of it: a spawn
took 0.95 ms with the loop idle against 0.27 ms in its thread (1.1 ms at
each hand-off in the server), and beside a loop kept busy with short slices
of work, from 2 ms to seconds.

Every child gets its own session and process group (pgid == pid), as the
runner's stop path expects (``procgroups``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading

READ_LIMIT = 64 * 1024  # bytes a StreamReader buffers before it pauses the pipe


class Child:
    """A started process: ``pid``, ``stdout`` (None unless piped),
    ``returncode`` (None while it runs), ``wait()`` and ``close_output()``."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout: asyncio.StreamReader | None,
                 transport: asyncio.ReadTransport | None, exited: asyncio.Future[int]) -> None:
        self._popen = popen
        self.stdout = stdout
        self._transport = transport
        self._exited = exited

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """The exit status once the process exited (negative: killed by that
        signal). Unlike ``asyncio.subprocess.Process.wait`` in Python 3.11, it
        does not also wait for the output pipe to close, which a background
        child (``sleep 300 &``) can hold open for as long as it lives."""
        return await asyncio.shield(self._exited)

    def close_output(self) -> None:
        """Stop reading the output pipe (a process outside the job still holds it)."""
        if self._transport is not None:
            self._transport.close()


async def spawn(argv: list[str], *, cwd: str, env: dict[str, str],
                merge_stderr: bool = True) -> Child:
    """Start ``argv`` in ``cwd`` with ``env``, stdin from /dev/null and stdout
    piped (stderr into it, or to /dev/null when ``merge_stderr`` is False).

    Raises ``OSError`` when it cannot be started (no such directory or
    program). A caller cancelled while the spawn is under way does not leave
    the process behind: it is killed and reaped."""
    loop = asyncio.get_running_loop()
    # In the loop's thread on purpose: a vfork stops it until the exec, as a
    # thread's fork_exec would too (see above).
    popen = subprocess.Popen(  # noqa: ASYNC220
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.DEVNULL,
        start_new_session=True)
    exited = _watch_exit(loop, popen)
    reader = asyncio.StreamReader(limit=READ_LIMIT)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), popen.stdout)
    except BaseException:
        _kill(popen)
        raise
    return Child(popen, reader, transport, exited)


def _watch_exit(loop: asyncio.AbstractEventLoop,
                popen: subprocess.Popen[bytes]) -> asyncio.Future[int]:
    """A future set to the exit status when ``popen`` exits (and is reaped)."""
    exited: asyncio.Future[int] = loop.create_future()
    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):  # not Linux, or a kernel before 5.3
        _thread_wait(loop, popen, exited)
        return exited

    def ready() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        code = popen.wait()  # it exited: the reap does not block
        if not exited.done():
            exited.set_result(code)

    loop.add_reader(pidfd, ready)
    return exited


def _thread_wait(loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes],
                 exited: asyncio.Future[int]) -> None:
    """Where no pidfd is to be had: a thread of its own waits, as asyncio's
    ``ThreadedChildWatcher`` does (a pool would starve with many long jobs)."""

    def done(code: int) -> None:
        if not exited.done():
            exited.set_result(code)

    def wait() -> None:
        loop.call_soon_threadsafe(done, popen.wait())

    threading.Thread(target=wait, name=f"deployster-wait-{popen.pid}", daemon=True).start()


def _kill(popen: subprocess.Popen[bytes]) -> None:
    """End a child nobody will run: its exit watcher (``_watch_exit``) reaps it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    if popen.stdout is not None:
        popen.stdout.close()
