"""The watchers' event feed (``overview.watch_events``) over a real Redis."""

from __future__ import annotations

import asyncio

from deployster import events
from deployster.overview import watch_events
from deployster.service import Deployster


async def test_watchers_hear_that_they_listen_then_both_channels_in_order(
    core: Deployster,
) -> None:
    stream = watch_events(core)
    try:
        # Nothing published yet: the first item says the subscription stands,
        # so a dashboard re-reads what changed before it (no event will).
        first = await asyncio.wait_for(anext(stream), 10)
        assert first == {"type": events.SUBSCRIBED}
        await events.publish(core.redis, core.keys, events.RELEASED, project=3)
        await core.redis.publish(core.keys.feed, events.encode(events.HISTORY))
        await core.redis.publish(core.keys.events, "not json")
        seen = [await asyncio.wait_for(anext(stream), 10) for _ in range(3)]
        assert seen == [{"type": "released", "project": 3}, {"type": "history"}, {}]
    finally:
        await stream.aclose()
