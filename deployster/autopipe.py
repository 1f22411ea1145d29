"""Auto-pipelining for one hot Lua script: calls made while a batch is in
flight go out together, as one pipeline, when it returns.

Under load most of a deploy request's cost was the round trip to Redis (a
socket write and a read per request, plus redis-py's per-command overhead).
Sending the calls that pile up during one round trip as a single pipeline pays
that once per batch. An idle server still sends a lone call at once (the next
loop iteration), so latency does not grow.

Order is kept: calls are sent in the order they were made and only one batch
is in flight at a time, so Redis runs them in that order. A caller that takes
an id and calls ``call`` without an ``await`` in between therefore reaches
Redis in id order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError

from .redis_conn import Redis


class ScriptBatcher:
    def __init__(self, redis: Redis, script: str) -> None:
        self.redis = redis
        self.script = script
        self.sha = redis.register_script(script).sha
        self._pending: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    def call(self, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue one EVALSHA; the future gets its reply (or its exception)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(([self.sha, len(keys), *keys, *args], future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_all())
        return future

    async def _send_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                replies = await self._execute([cmd for cmd, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # the callers get the outage, not this task
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():  # the caller went away; the call still ran
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _execute(self, commands: list[list[Any]]) -> list[Any]:
        replies = await self._pipeline(commands)
        # The script cache was flushed (Redis restarted): those calls did not
        # run; load the script and send them again.
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self.redis.script_load(self.script)
            again = await self._pipeline([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, commands: list[list[Any]]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for cmd in commands:
                pipe.execute_command("EVALSHA", *cmd)
            return list(await pipe.execute(raise_on_error=False))
