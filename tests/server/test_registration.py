"""Projects that register themselves on first deploy, over real HTTP.

Scenarios replayed from other deploy tools' bug reports: two CI runs racing to
deploy a directory nobody registered yet (a UNIQUE error answered 500), two new
directories that both want the name ``web``, and a Capistrano-style ``current``
symlink switched to a new release between two deploys (which became a second
project, so both deploys ran at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.server import LiveServer, serving


@pytest.fixture
def rooted(settings: Settings, root: Path, tmp_path: Path) -> Iterator[LiveServer]:
    yield from serving(settings.with_overrides(allowed_roots=(root,)), tmp_path)


async def test_racing_first_deploys_of_a_new_directory_all_get_a_job(
    rooted: LiveServer, root: Path
) -> None:
    app = root / "fresh-app"
    app.mkdir()
    async with rooted.client() as client:
        replies = await asyncio.gather(*[
            client.post("/deploy", json=deploy_body(app, "true", commit=f"c{i}"))
            for i in range(8)
        ])
        # Registered by the deploy, so listed at once (not "a moment later").
        listed = (await client.get("/projects")).json()["projects"]
        assert [p["path"] for p in listed] == [str(app)]
        assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies]
        jobs = [r.json()["job_id"] for r in replies]
        assert len(set(jobs)) == 8
        for job in jobs:
            assert (await wait_for_status(client, job))["status"] == "complete"
    assert "internal_error" not in rooted.log() and "Traceback" not in rooted.log()


async def test_a_project_registered_by_a_deploy_is_listed_at_once(
    rooted: LiveServer, root: Path
) -> None:
    async with rooted.client() as client:
        assert (await client.get("/projects")).json()["projects"] == []  # cached empty
        for n in range(5):
            app = root / f"app{n}"
            app.mkdir()
            reply = await client.post("/deploy", json=deploy_body(app, "true"))
            assert reply.status_code == 200, reply.text
            listed = (await client.get("/projects")).json()["projects"]
            assert str(app) in [p["path"] for p in listed]


async def test_racing_new_directories_that_want_one_name_get_distinct_names(
    rooted: LiveServer, root: Path
) -> None:
    dirs = [root / team / "web" for team in ("a", "b", "c", "d")]
    for path in dirs:
        path.mkdir(parents=True)
    async with rooted.client() as client:
        replies = await asyncio.gather(*[
            client.post("/deploy", json=deploy_body(path, "true")) for path in dirs
        ])
        assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
        listed = (await client.get("/projects")).json()["projects"]
    assert sorted(p["name"] for p in listed) == ["web", "web-2", "web-3", "web-4"]
    assert sorted(p["path"] for p in listed) == sorted(str(d) for d in dirs)


async def test_a_switched_current_symlink_still_serialises_deploys(
    rooted: LiveServer, root: Path, tmp_path: Path
) -> None:
    """Deploy 1 runs in releases/1 through ``current``; the release switch moves
    ``current`` to releases/2; deploy 2 to ``current`` is the same project, so it
    waits for deploy 1 instead of running beside it."""
    app = root / "app"
    (app / "releases" / "1").mkdir(parents=True)
    (app / "releases" / "2").mkdir()
    current = app / "current"
    current.symlink_to(app / "releases" / "1", target_is_directory=True)
    gate, started = tmp_path / "gate", tmp_path / "started"
    async with rooted.client() as client:
        first = (await client.post("/deploy", json=deploy_body(
            current, f"touch {started}; while [ ! -e {gate} ]; do sleep 0.05; done",
            commit="r1"))).json()
        await _until(started.exists)
        current.unlink()
        current.symlink_to(app / "releases" / "2", target_is_directory=True)
        second = (await client.post("/deploy", json=deploy_body(
            current, "pwd -P > where", commit="r2"))).json()
        assert second.get("queued") is True, second
        gate.touch()
        assert (await wait_for_status(client, first["job_id"]))["status"] == "complete"
        assert (await wait_for_status(client, second["job_id"]))["status"] == "complete"
        listed = (await client.get("/projects")).json()["projects"]
    assert [p["path"] for p in listed] == [str(current)]
    # The job ran in the directory as sent: the new release.
    assert (app / "releases" / "2" / "where").read_text().strip() == str(
        (app / "releases" / "2").resolve())


async def _until(predicate: Callable[[], bool], timeout: float = 20) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")
