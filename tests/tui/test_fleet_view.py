"""The dashboard over a fleet (README.md#the-dashboard, #several-hosts): two
``deployster serve`` processes, web-1 and web-2, on one PostgreSQL database and
the test's Redis namespace, and the dashboard on web-1's host (a core with
web-1's settings). It names each project's node once the projects span two
nodes, shows one node's projects with ``n`` or ``/``, says in its header which
node is down, and its controls act on web-2's project as on web-1's: a
redeploy of web-2's job runs on web-2 (each command stamps
``$DEPLOYSTER_NODE``).

Skipped without PostgreSQL (``DEPLOYSTER_TEST_DATABASE_URL``): SQLite is one
node's."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from deployster.service import Deployster
from deployster.settings import Settings
from deployster.tui.app import make_app
from deployster.tui.widgets.status_line import StatusLine
from tests.helpers.deploys import wait_for_status
from tests.helpers.fleet import Fleet, app_dir, deploy, running_fleet, stamp
from tests.helpers.locks import hold_lock
from tests.helpers.tui import modal_text, open_project, projects, table_text, wait_until

SIZE = (180, 45)


@pytest.fixture
def two_nodes(settings: Settings, pg_url: str, tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(settings, pg_url, tmp_path, ("web-1", "web-2")) as fleet:
        yield fleet


@pytest.fixture
async def web1(two_nodes: Fleet) -> AsyncIterator[Deployster]:
    """The dashboard's core: on web-1's host, with its settings."""
    core = await Deployster.open(two_nodes.settings["web-1"])
    try:
        yield core
    finally:
        await core.close()


def headers(table: DataTable[object]) -> list[str]:
    """The column labels, less the sort arrow."""
    return [c.label.plain.rstrip(" ▲▼") for c in table.ordered_columns]


def names(table: DataTable[object]) -> list[str]:
    """The project names on the table, top to bottom."""
    return [row.split(" | ")[0] for row in table_text(table)]


async def test_the_node_column_the_filter_by_node_and_a_node_down_in_the_header(
    two_nodes: Fleet, web1: Deployster, tmp_path: Path
) -> None:
    shared, api, shop = (app_dir(tmp_path, f"srv/{n}") for n in ("app", "api", "shop"))
    await two_nodes.register("web-1", shared, name="app")
    await two_nodes.register("web-1", api, name="api")
    app = make_app(web1, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table = await projects(pilot, 2)
        status = app.screen.query_one(StatusLine)
        # Two nodes up, but every project is web-1's: nothing to tell apart.
        await wait_until(pilot, lambda: "nodes 2/2 up" in status.text.plain, what="2/2 up")
        assert "runner" not in status.text.plain  # the nodes say it
        assert "node" not in headers(table)

        await two_nodes.register("web-2", shared, name="app-b")
        await two_nodes.register("web-2", shop, name="shop")
        await wait_until(pilot, lambda: table.row_count == 4 and "node" in headers(table),
                         what="web-2's projects, with the node column")
        assert headers(table)[:3] == ["project", "node", "lock holder"]
        assert sorted(tuple(row.split(" | ")[:2]) for row in table_text(table)) == [
            ("api", "web-1"), ("app", "web-1"), ("app-b", "web-2"), ("shop", "web-2")]

        # n: web-1's projects, web-2's, then all of them again.
        for shown in (["api", "app"], ["app-b", "shop"], ["api", "app", "app-b", "shop"]):
            await pilot.press("n")
            await wait_until(pilot, lambda shown=shown: names(table) == shown, what=str(shown))
        # / matches a node's name too (no path or project name holds "web-2").
        await pilot.press("slash", *"web-2", "enter")
        await wait_until(pilot, lambda: names(table) == ["app-b", "shop"], what="/web-2")
        await pilot.press("escape")
        await wait_until(pilot, lambda: table.row_count == 4, what="the filter cleared")

        # web-2 dies; its last heartbeat, 42 s old (what a SIGKILL leaves
        # after 42 s, without waiting: the up/down rule is fleet.Node.up's).
        two_nodes.servers["web-2"].stop(signal.SIGKILL)
        last = json.loads(await web1.redis.hget(web1.keys.nodes, "web-2"))
        last["heartbeat_ms"] = int(time.time() * 1000) - 42_000
        await web1.redis.hset(web1.keys.nodes, "web-2", json.dumps(last))
        await wait_until(
            pilot, lambda: re.search(r"nodes 1/2 up · web-2 down 4\ds", status.text.plain),
            what="web-2 down in the header")

        # Its project's screen says whose it is, and that its queue waits.
        async with two_nodes.servers["web-1"].client() as client:
            await deploy(client, shared, "true", node="web-2")
        await pilot.press("n", "n")  # web-2's: app-b first
        await wait_until(pilot, lambda: names(table) == ["app-b", "shop"], what="web-2's")
        await open_project(pilot)
        title = app.screen.query_one("#project-title", Static)
        await wait_until(pilot, lambda: re.match(r"app-b on web-2 \(down 4\ds\)",
                                                 str(title.render())), what="the title")
        queue_title = app.screen.query_one("#queue-title", Static)
        await wait_until(pilot, lambda: "node web-2 is down: they wait until it is back"
                         in str(queue_title.render()), what="the queue waiting for web-2")


async def test_unlock_cancel_and_redeploy_act_on_another_nodes_project(
    two_nodes: Fleet, web1: Deployster, tmp_path: Path
) -> None:
    """The same path is web-1's "app" and web-2's "app-b": from the dashboard
    on web-1, app-b's stale lock is released, its running job (on web-2)
    cancelled, and its last deploy redeployed, which runs on web-2."""
    shared = app_dir(tmp_path, "srv/app")
    await two_nodes.register("web-1", shared, name="app")
    theirs = await two_nodes.register("web-2", shared, name="app-b")
    await hold_lock(web1, theirs, "01JSTRANGERSTRANGERSTRANGER", 600_000)
    app = make_app(web1, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot, \
            two_nodes.servers["web-1"].client() as client:
        table = await projects(pilot, 2)
        await pilot.press("n", "n")
        await wait_until(pilot, lambda: names(table) == ["app-b"], what="web-2's app-b")
        assert "STALE" in table_text(table)[0]

        shown = await modal_text(pilot, "u")
        assert "node" in shown and "web-2" in shown
        await pilot.press("y")
        await wait_until(pilot, lambda: "STALE" not in table_text(table)[0],
                         what="the lock released")

        running = await deploy(client, shared, "sleep 30", node="web-2", commit="s1")
        await wait_until(pilot, lambda: "running" in table_text(table)[0], what="running")
        shown = await modal_text(pilot, "c")
        assert running["job_id"] in shown and "web-2" in shown
        await pilot.press("y")
        ended = await wait_for_status(client, running["job_id"], timeout=20)
        assert (ended["status"], ended["reason"]) == ("failed", "cancelled")

        done = await deploy(client, shared, stamp(shared, "ran"), node="web-2", commit="c1")
        assert (await wait_for_status(client, done["job_id"]))["status"] == "complete"
        await wait_until(pilot, lambda: "✔" in table_text(table)[0], what="the last deploy")
        shown = await modal_text(pilot, "r")
        assert done["job_id"] in shown and "to run on node web-2 (the project's)" in shown
        await pilot.press("y")
        ran = shared / "ran"
        await wait_until(pilot, lambda: ran.read_text().count("\n") == 2, timeout=30,
                         what="the redeploy to run")
    assert ran.read_text() == "ran web-2\nran web-2\n"
