"""``GET /metrics`` (docs/api.md#get-metrics, README.md#metrics): the page a
Prometheus scrapes, parsed as Prometheus parses it, after real deploys; the
same totals from a second server process on the same Redis, and after the
first one stopped; the bearer token when ``DEPLOYSTER_METRICS_TOKEN`` is set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from quart.typing import TestClientProtocol as Client

from deployster.server.app import create_app
from deployster.service import Deployster
from deployster.settings import Settings
from tests.helpers.deploys import deploy_body, wait_for_status
from tests.helpers.server import TOKEN, LiveServer, start_server
from tests.test_metrics import Samples, parse, value

APP = {"project": "my-app"}
# Ages and TTLs move between two scrapes; every other sample is a count or a state.
MOVING = ("_age_seconds", "_ttl_seconds", "_held_seconds")


async def scrape(client: httpx.AsyncClient) -> Samples:
    reply = await client.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(reply.text)


def counts(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items()
            if not k[0].endswith(MOVING) and k[0] != "deployster_runners_up"}


async def wait_for_log(client: httpx.AsyncClient, job_id: str, text: str) -> None:
    for _ in range(400):
        if text in (await client.get(f"/jobs/{job_id}/logs")).json()["logs"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never reached the log of {job_id}")


async def log_bytes(client: httpx.AsyncClient, *job_ids: str) -> int:
    """The jobs' log sizes as ``GET /jobs/<id>`` tells them, summed."""
    return sum([int((await client.get(f"/jobs/{j}")).json()["log_bytes"]) for j in job_ids])


async def test_the_page_shows_what_the_deploys_did(
    server: LiveServer, core: Deployster, project_dir: Path, settings: Settings, tmp_path: Path
) -> None:
    await core.projects.add(str(project_dir))
    gate = project_dir / "gate"
    async with server.client() as client:
        ok = (await client.post("/deploy", json=deploy_body(project_dir, "echo ok"))).json()
        assert (await wait_for_status(client, ok["job_id"]))["status"] == "complete"
        bad = (await client.post("/deploy", json=deploy_body(project_dir, "exit 3"))).json()
        assert (await wait_for_status(client, bad["job_id"]))["status"] == "failed"
        held = (await client.post("/deploy", json=deploy_body(
            project_dir, f"echo holding; while [ ! -e {gate} ]; do sleep 0.05; done",
            commit="held01"))).json()
        waiting = (await client.post("/deploy", json=deploy_body(
            project_dir, "echo after", commit="after01"))).json()
        assert waiting.get("queued") is True
        await wait_for_log(client, held["job_id"], "holding\n")
        during = await scrape(client)
        written = await log_bytes(client, ok["job_id"], bad["job_id"], held["job_id"])

        assert value(during, "deployster_deploys_started_total", **APP) == 3
        assert value(during, "deployster_deploys_finished_total", **APP, status="complete",
                     reason="") == 1
        assert value(during, "deployster_deploys_finished_total", **APP, status="failed",
                     reason="command_failed") == 1
        assert value(during, "deployster_deploy_duration_seconds_count", **APP) == 2
        assert value(during, "deployster_deploy_duration_seconds_sum", **APP) > 0
        assert value(during, "deployster_queue_length", **APP) == 1
        assert value(during, "deployster_queue_oldest_age_seconds", **APP) > 0
        assert value(during, "deployster_lock_held", **APP) == 1
        assert 0 < value(during, "deployster_lock_ttl_seconds", **APP) <= 600
        assert value(during, "deployster_lock_held_seconds", **APP) > 0
        assert value(during, "deployster_deploy_running", **APP) == 1
        # Each of the three started its first process: three hand-offs.
        assert value(during, "deployster_handoff_seconds_count") == 3
        assert value(during, "deployster_handoff_seconds_sum") > 0
        assert value(during, "deployster_log_bytes_total", **APP) == written
        assert value(during, "deployster_runners_up") == 1

        gate.touch()
        assert (await wait_for_status(client, waiting["job_id"]))["status"] == "complete"
        after = await scrape(client)
    assert value(after, "deployster_deploys_started_total", **APP) == 4
    assert value(after, "deployster_deploys_finished_total", **APP, status="complete",
                 reason="") == 3
    assert value(after, "deployster_deploy_duration_seconds_count", **APP) == 4
    assert value(after, "deployster_handoff_seconds_count") == 4
    assert value(after, "deployster_queue_length", **APP) == 0
    assert value(after, "deployster_lock_held", **APP) == 0
    assert value(after, "deployster_deploy_running", **APP) == 0

    # Another server process on the same Redis counts nothing of its own: the
    # same totals; and they outlive the first server.
    second = start_server(settings, tmp_path / "second.log")
    try:
        async with second.client() as other:
            both = await scrape(other)
            assert counts(both) == counts(after)
            assert value(both, "deployster_runners_up") == 2
            server.stop()
            alone = await scrape(other)
        assert counts(alone) == counts(after)
        assert value(alone, "deployster_runners_up") == 1
    finally:
        second.stop()


# ---------------------------------------------------------------- the token


@pytest.fixture
async def with_token(settings: Settings) -> AsyncIterator[Client]:
    """The app in this process, ``DEPLOYSTER_METRICS_TOKEN=s3cret-metrics``."""
    app = create_app(settings.with_overrides(metrics_token="s3cret-metrics"))
    async with app.test_app() as running:
        yield running.test_client()


@pytest.mark.parametrize("sent", [
    None, "Bearer wrong-token", "Bearer s3cret-metric", "Basic s3cret-metrics", "s3cret-metrics",
])
async def test_with_a_metrics_token_a_request_without_it_is_401(
    with_token: Client, sent: str | None
) -> None:
    reply = await with_token.get("/metrics", headers={"Authorization": sent} if sent else {})
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="deployster metrics"'
    body = await reply.get_json()
    assert body["code"] == "unauthorized"
    assert "Authorization: Bearer" in body["error"]
    # The deploy token is no metrics token.
    other = await with_token.get("/metrics", headers={"x-deployster-token": TOKEN})
    assert other.status_code == 401


async def test_with_a_metrics_token_the_bearer_gets_the_page(
    with_token: Client,
) -> None:
    for scheme in ("Bearer", "bearer"):
        reply = await with_token.get(
            "/metrics", headers={"Authorization": f"{scheme} s3cret-metrics"})
        assert reply.status_code == 200
        assert "deployster_runners_up" in (await reply.get_data(as_text=True))


async def test_without_a_metrics_token_the_page_is_open(
    core: Deployster, settings: Settings
) -> None:
    app = create_app(settings, core)
    async with app.test_app() as running:
        reply = await running.test_client().get("/metrics")
        assert reply.status_code == 200
        page = await reply.get_data(as_text=True)
    assert value(parse(page), "deployster_runners_up") == 1  # this app's dispatcher
