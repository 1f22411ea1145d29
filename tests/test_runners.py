"""Which deploy servers (runners) are alive: ``recovery.live_runners``, read
through the registry the dispatchers announce themselves in (docs/redis.md#keys),
never by scanning Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from deployster import recovery
from deployster.procinfo import boot_id, hostname
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.server import start_server


async def test_a_runner_is_alive_from_its_announcement_to_its_withdrawal(
    core: Deployster, settings: Settings
) -> None:
    assert await recovery.live_runners(core) == []
    await recovery.announce(core)
    other = Deployster(settings, core.redis, core.db)  # a second server's core
    await recovery.announce(other)
    assert sorted(await recovery.live_runners(core)) == sorted([core.runner_id,
                                                                other.runner_id])
    await recovery.withdraw(other)
    assert await recovery.live_runners(core) == [core.runner_id]
    # Its announcement expired (a runner on another machine that stopped
    # refreshing it): gone, though the registry still lists it for a while.
    await core.redis.delete(core.keys.runner(core.runner_id))
    assert await recovery.live_runners(core) == []


async def test_a_runner_on_this_machine_whose_process_ended_is_gone_at_once(
    core: Deployster,
) -> None:
    ended = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await ended.wait()
    await recovery.announce(core)
    # An announcement naming a process of this machine that no longer runs
    # (kill -9): not alive, without waiting for its key's TTL.
    await core.redis.set(core.keys.runner(core.runner_id), json.dumps(
        {"host": hostname(), "boot": boot_id(), "pid": ended.pid, "pid_start": "gone"}))
    assert await recovery.live_runners(core) == []


async def test_a_served_runner_is_listed_and_a_killed_one_is_not(
    core: Deployster, settings: Settings, tmp_path: Path
) -> None:
    live = start_server(settings, tmp_path / "server.log")
    try:
        runners = await recovery.live_runners(core)
        assert len(runners) == 1
    finally:
        live.stop(signal.SIGKILL)
    assert await recovery.live_runners(core) == []
