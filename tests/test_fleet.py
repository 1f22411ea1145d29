"""Several hosts, one Redis and one PostgreSQL (README.md#several-hosts): three
``deployster serve`` processes on this machine, each a node with its own name
and apps directory, sharing the test's Redis namespace and a PostgreSQL
database. A job runs only on its project's node (each command stamps
``$DEPLOYSTER_NODE``); any node takes a deploy, a read or a cancel for any
node's job; a node killed mid-job leaves its queue waiting for it.

Skipped without PostgreSQL (``DEPLOYSTER_TEST_DATABASE_URL``): SQLite is one
node's."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.fleet import Fleet, app_dir, deploy, running_fleet, stamp
from tests.helpers.paths import REPO
from tests.helpers.processes import pid_gone
from tests.helpers.server import start_server

NODES = ("web-1", "web-2", "web-3")


@pytest.fixture
def fleet(settings: Settings, pg_url: str, tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(settings, pg_url, tmp_path, NODES) as the_fleet:
        yield the_fleet


async def status_of(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).json()
    return data


async def wait_until(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


# ------------------------------------------------------------ one path, two nodes


async def test_a_path_on_two_nodes_is_two_projects_each_run_on_its_own_node(
    fleet: Fleet, tmp_path: Path
) -> None:
    shared = app_dir(tmp_path, "srv/app")
    one = await fleet.register("web-1", shared)
    two = await fleet.register("web-2", shared)
    assert one != two
    web1, web3 = fleet.servers["web-1"], fleet.servers["web-3"]
    async with web1.client() as a, web3.client() as c:
        projects = {(p["node"], p["path"]) for p in (await c.get("/projects")).json()["projects"]}
        assert projects == {("web-1", str(shared)), ("web-2", str(shared))}
        local = await deploy(a, shared, stamp(shared, "local"))
        remote = await deploy(a, shared, stamp(shared, "remote"), node="web-2", commit="b")
        # Read from a third node: the same answers.
        for job in (local, remote):
            assert (await wait_for_status(c, job["job_id"]))["status"] == "complete"
        assert (await status_of(c, local["job_id"]))["node"] == "web-1"
        assert (await status_of(c, remote["job_id"]))["node"] == "web-2"
        # A directory web-3 never registered is not web-3's to run.
        refused = await a.post("/deploy", json={**deploy_body(shared, "true"), "node": "web-3"})
        assert refused.status_code == 404, refused.text
        assert "on node 'web-3'" in refused.json()["error"]
    assert sorted((shared / "ran").read_text().split("\n")[:-1]) == [
        "local web-1", "remote web-2"]
    # The command line names a path on a node with --node (default: its own).
    env = {**os.environ, **fleet.settings["web-1"].to_env()}
    for node, expected in ((None, one), ("web-2", two)):
        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "deployster", "project", "show", str(shared), "--json",
             *(["--node", node] if node else [])],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["id"] == expected


async def test_a_cancel_sent_to_any_node_stops_the_job_on_its_node(
    fleet: Fleet, tmp_path: Path
) -> None:
    app = app_dir(tmp_path, "web-2/app")
    await fleet.register("web-2", app)
    async with fleet.servers["web-1"].client() as a, fleet.servers["web-3"].client() as c:
        job = await deploy(a, app, "sleep 30", node="web-2")
        await wait_until(lambda: _running(c, job["job_id"]), "the job to run on web-2")
        started = time.monotonic()
        reply = await c.post(f"/jobs/{job['job_id']}/cancel")
        assert reply.status_code in (200, 202), reply.text
        ended = await wait_for_status(a, job["job_id"], timeout=20)
        assert ended["status"] == "failed" and ended["reason"] == "cancelled"
        assert time.monotonic() - started < 10  # reached web-2 at once, not a sweep later


async def test_a_redeploy_or_rollback_sent_to_any_node_runs_on_the_jobs_node(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The same path is a project on web-1 and on web-2: a redeploy of web-2's
    job, and a rollback of web-2's project, sent to web-1, are queued for
    web-2 and run there (control.redeploy), never for web-1's project at that
    path."""
    shared = app_dir(tmp_path, "srv/app")
    await fleet.register("web-1", shared)
    await fleet.register("web-2", shared)
    async with fleet.servers["web-1"].client() as a:
        jobs = [await deploy(a, shared, stamp(shared, label), node="web-2", commit=label)
                for label in ("c1", "c2")]
        for job in jobs:
            assert (await wait_for_status(a, job["job_id"]))["status"] == "complete"
        again = await a.post(f"/jobs/{jobs[0]['job_id']}/redeploy")
        assert again.status_code == 200, again.text
        assert (await wait_for_status(a, again.json()["job_id"]))["status"] == "complete"
        assert (await status_of(a, again.json()["job_id"]))["node"] == "web-2"
        name = next(p["name"] for p in (await a.get("/projects")).json()["projects"]
                    if p["node"] == "web-2")
        back = await a.post(f"/projects/{name}/rollback")  # from c1 (redeployed) to c2
        assert back.status_code == 200, back.text
        assert (await wait_for_status(a, back.json()["job_id"]))["status"] == "complete"
        assert (await status_of(a, back.json()["job_id"]))["node"] == "web-2"
    assert (shared / "ran").read_text().split("\n")[:-1] == [
        "c1 web-2", "c2 web-2", "c1 web-2", "c2 web-2"]


async def _running(client: httpx.AsyncClient, job_id: str) -> bool:
    return (await status_of(client, job_id))["status"] == "running"


# --------------------------------------------------- a node killed mid-job


async def test_a_node_killed_mid_job_leaves_its_queue_waiting_for_it(
    fleet: Fleet, tmp_path: Path
) -> None:
    """kill -9 web-2 while its job runs, two more queued behind it: web-1 still
    runs its own; web-2's job is marked interrupted by a live node once its
    heartbeat is gone, its processes left alone (they are web-2's host's);
    its queue waits. Restarted, web-2 stops the leftover process and drains
    its queue in order."""
    mine, theirs = app_dir(tmp_path, "web-1/app"), app_dir(tmp_path, "web-2/app")
    await fleet.register("web-1", mine)
    await fleet.register("web-2", theirs)
    pidfile = theirs / "pid"
    async with fleet.servers["web-1"].client() as a:
        running = await deploy(a, theirs, f"echo $$ > {pidfile}; exec sleep 300",
                               node="web-2", commit="r")
        queued = [await deploy(a, theirs, stamp(theirs, f"q{n}"), node="web-2",
                               commit=f"q{n}") for n in range(2)]
        assert all(q.get("queued") for q in queued)
        await wait_until(lambda: _running(a, running["job_id"]), "web-2's job to run")
        await wait_until(_exists(pidfile), "the job's pid")
        orphan = int(pidfile.read_text())

        fleet.servers["web-2"].stop(signal.SIGKILL)
        ended = await wait_for_status(a, running["job_id"], timeout=40)
        assert (ended["status"], ended["reason"]) == ("failed", "interrupted")
        # web-1 goes on with its own work meanwhile.
        own = await deploy(a, mine, stamp(mine, "own"))
        assert (await wait_for_status(a, own["job_id"]))["status"] == "complete"
        assert (mine / "ran").read_text() == "own web-1\n"
        # web-2's queue waits for web-2; its process is web-2's host's to stop.
        await asyncio.sleep(2)
        assert [(await status_of(a, q["job_id"]))["status"] for q in queued] == [
            "queued", "queued"]
        assert not pid_gone(orphan)

        fleet.start("web-2")
        for q in queued:
            assert (await wait_for_status(a, q["job_id"]))["status"] == "complete"
        await wait_until(_gone(orphan), "the leftover process to be stopped", timeout=20)
    assert (theirs / "ran").read_text() == "q0 web-2\nq1 web-2\n"


def _exists(path: Path) -> Any:
    async def check() -> bool:
        return path.exists() and bool(path.read_text().strip())
    return check


def _gone(pid: int) -> Any:
    async def check() -> bool:
        return pid_gone(pid)
    return check


# ------------------------------------------------------------- racing deploys


async def test_racing_deploys_over_three_nodes_run_once_each_on_their_node_in_order(
    fleet: Fleet, tmp_path: Path
) -> None:
    """1,000 deploys over 3 nodes x 5 projects, each sent to a random node:
    no two jobs of a project overlap, none is lost or run twice, none runs on
    another node, and each project runs the jobs one node accepted in the
    order it accepted them."""
    projects = []
    for node in NODES:
        for n in range(5):
            path = app_dir(tmp_path, f"{node}/app{n}")
            await fleet.register(node, path)
            projects.append((node, path))
    log = tmp_path / "stamps"
    clients = {n: fleet.servers[n].client() for n in NODES}
    sem = asyncio.Semaphore(32)
    rng = random.Random(7)
    plan = [projects[rng.randrange(len(projects))] for _ in range(1000)]

    async def one(k: int, node: str, path: Path) -> tuple[str, str]:
        command = (f'echo "start {k} $DEPLOYSTER_NODE $(date +%s%N)" >> {log}; '
                   f'echo "end {k} $DEPLOYSTER_NODE $(date +%s%N)" >> {log}')
        sender = rng.choice(NODES)
        async with sem:
            reply = await deploy(clients[sender], path, command, node=node, commit=f"{k:07x}")
        return reply["job_id"], sender

    try:
        accepted = await asyncio.gather(*(one(k, n, p) for k, (n, p) in enumerate(plan)))

        async def all_ended() -> bool:
            text = log.read_text() if log.exists() else ""
            return sum(line.startswith("end ") for line in text.splitlines()) >= len(plan)

        await wait_until(all_ended, "every job to end", timeout=240)
    finally:
        for client in clients.values():
            await client.aclose()
    starts: dict[int, tuple[str, int]] = {}
    ends: dict[int, int] = {}
    for line in log.read_text().splitlines():
        kind, k, node, at = line.split()
        if kind == "start":
            assert int(k) not in starts, f"job {k} ran twice"
            starts[int(k)] = (node, int(at))
        else:
            ends[int(k)] = int(at)
    assert sorted(starts) == list(range(len(plan))), "lost jobs"
    wrong = [k for k, (node, _) in starts.items() if node != plan[k][0]]
    assert wrong == [], f"jobs run on another node: {wrong[:5]}"
    for node, path in projects:
        ks = [k for k in range(len(plan)) if plan[k] == (node, path)]
        by_start = sorted(ks, key=lambda k: starts[k][1])
        for a, b in itertools.pairwise(by_start):
            assert ends[a] <= starts[b][1], f"{path}: jobs {a} and {b} overlapped"
        # Acceptance order is a server's: the ids one node hands out reach
        # Redis in that order, so its jobs of a project start in id order.
        for sender in NODES:
            mine = [k for k in by_start if accepted[k][1] == sender]
            assert mine == sorted(mine, key=lambda k: accepted[k][0]), (
                f"{path}: jobs accepted by {sender} not run in acceptance order")


# ------------------------------------------------------------ storage rules


def test_a_second_node_on_sqlite_or_the_embedded_redis_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    first = start_server(settings.model_copy(update={"node": "web-1"}),
                         tmp_path / "web-1.log")
    try:
        second = settings.model_copy(update={"node": "web-2",
                                             "data_dir": tmp_path / "web-2",
                                             "database_url": f"sqlite:///{tmp_path}/b.db"})
        with pytest.raises(RuntimeError) as refused:
            start_server(second, tmp_path / "web-2.log")
        assert "several nodes need one shared Redis/Valkey" in str(refused.value)
        assert "this node uses SQLite" in str(refused.value)
        assert "Traceback" not in str(refused.value)
    finally:
        first.stop()


def test_deployster_nodes_lists_every_node_up_or_down(fleet: Fleet) -> None:
    env = {**os.environ, **fleet.settings["web-1"].to_env()}

    def listed() -> list[dict[str, Any]]:
        out = subprocess.run([sys.executable, "-m", "deployster", "nodes", "--json"], env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        nodes: list[dict[str, Any]] = json.loads(out.stdout)
        return nodes

    assert {(n["name"], n["up"]) for n in listed()} == {(n, True) for n in NODES}
    fleet.servers["web-3"].stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if {(n["name"], n["up"]) for n in listed()} == {
                ("web-1", True), ("web-2", True), ("web-3", False)}:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"web-3 not shown down: {listed()}")
    text = subprocess.run([sys.executable, "-m", "deployster", "nodes"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60).stdout
    assert "web-1 (this)" in text and "DOWN" in text

    def forget(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "deployster", "nodes", "--forget", name],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=60)

    up = forget("web-2")
    assert up.returncode == 2 and "node 'web-2' is up" in up.stderr, up.stderr
    assert "Traceback" not in up.stderr
    gone = forget("web-3")
    assert gone.returncode == 0, gone.stderr
    assert {n["name"] for n in listed()} == {"web-1", "web-2"}
