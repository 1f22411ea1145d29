"""Opening the Redis connection the settings ask for."""

from __future__ import annotations

import asyncio
from typing import Any, cast
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser, _AsyncRESP3Parser
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from .embedded_redis import ensure_embedded_redis
from .errors import ConfigError
from .outages import REDIS_DOWN, refusal
from .settings import REDIS_HEADROOM, Settings

Redis = aioredis.Redis

DEFAULT_POOL_SIZE = Settings.model_fields["max_streams"].default + REDIS_HEADROOM

# Re-exported: what a dropped, refused or write-refusing Redis raises (see
# ``outages``); callers keep their state and retry, the API answers 503.
__all__ = ["REDIS_DOWN", "Redis", "connect_redis", "redis_from_url", "resolve_redis_url"]


class _Refusals:
    """Reply parsing that raises ``outages.RedisRefused`` for the error replies
    by which Redis refuses commands for now (MISCONF, OOM, READONLY…), including
    the form Redis 6.2 gives them inside a script. redis-py leaves MISCONF a
    plain ``ResponseError``, which nothing can tell apart from a bug.

    A parser class of our clients only (redis-py's ``parser_class`` option), so
    other users of redis-py in the process see its own behaviour.
    """

    @classmethod
    def parse_error(cls, response: str) -> Any:
        return refusal(response) or super().parse_error(response)  # type: ignore[misc]


class _RESP2Parser(_Refusals, _AsyncRESP2Parser):
    pass


class _RESP3Parser(_Refusals, _AsyncRESP3Parser):
    pass


class _HiredisParser(_Refusals, _AsyncHiredisParser):
    pass


class _HiredisPacking:
    """Commands packed by hiredis, in C, as redis-py's own synchronous client
    does when hiredis is installed; its asyncio connections pack them in
    Python (14 µs for the enqueue script's call of a deploy, 1.6 µs here:
    bench/deploy_throughput.py). A mixin on the pool's connection class, so
    TCP, TLS and Unix-socket connections all get it."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return cast(list[bytes], _HIREDIS.pack(*args))


_HIREDIS = HiredisRespSerializer()


def _parser_for(protocol: object) -> type:
    """redis-py swaps its own parsers to match the protocol, not a subclass: pick it here."""
    if HIREDIS_AVAILABLE:
        return _HiredisParser  # speaks both
    return _RESP2Parser if str(protocol) == "2" else _RESP3Parser


async def resolve_redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    return await asyncio.to_thread(ensure_embedded_redis, settings.data_dir)


SENTINEL_SCHEME = "redis+sentinel://"


def _sentinel_client(url: str, max_connections: int) -> Redis:
    """A client of the master a Redis Sentinel names, from
    ``redis+sentinel://[:password@]host:port[,host:port…]/service[/db]``
    (redis-py's Sentinel support: a failover moves the client to the new
    master). The password, if any, is the master's; the sentinels take none."""
    rest = url[len(SENTINEL_SCHEME):]
    auth, _, rest = rest.rpartition("@")
    hosts_part, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ConfigError(f"{SENTINEL_SCHEME} URL without a service name: use "
                          f"{SENTINEL_SCHEME}host:26379/mymaster[/db]")
    service, db = parts[0], parts[1] if len(parts) > 1 else "0"
    hosts = []
    for item in hosts_part.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not db.isdigit():
            raise ConfigError(f"cannot read the sentinel URL: {item!r} is no host:port "
                              f"(use {SENTINEL_SCHEME}host:26379/mymaster[/db])")
        hosts.append((host, int(port)))
    password = unquote(auth.partition(":")[2]) if auth else None
    sentinel = Sentinel(hosts, socket_connect_timeout=2, socket_timeout=5)
    client = sentinel.master_for(
        service, db=int(db), password=password, decode_responses=True,
        max_connections=max_connections, health_check_interval=15, socket_connect_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    _use_our_parsing(client.connection_pool)
    return cast(Redis, client)


def _use_our_parsing(pool: Any) -> None:
    """Our parser (refusals as ``RedisRefused``) and, with hiredis, its packer;
    the client's name and version for ``CLIENT SETINFO`` worked out once, not
    by every new connection (redis-py 8 looks its version up in the installed
    packages' metadata each time: 0.6 ms of the loop's time a connection,
    paid when a burst grows the pool)."""
    kwargs = pool.connection_kwargs
    kwargs["parser_class"] = _parser_for(kwargs.get("protocol"))
    kwargs.setdefault("driver_info", DriverInfo())
    if HIREDIS_AVAILABLE:
        base = pool.connection_class
        pool.connection_class = type(base.__name__, (_HiredisPacking, base), {})


def redis_from_url(url: str, max_connections: int | None = None) -> Redis:
    """A client whose pool holds at most ``max_connections`` connections
    (default: the default settings' ``redis_pool_size``). A command that finds
    them all busy waits for one (redis-py's ``BlockingConnectionPool`` with no
    timeout) instead of failing: its default pool raised ``MaxConnectionsError``
    at the 101st command in flight, a ``ConnectionError`` the API answered as
    ``503 redis_unavailable`` (held by ``tests/server/test_load.py``). A
    command that cannot get a connection from Redis itself still fails at once.
    ``redis+sentinel://…`` URLs name a Sentinel-managed master (``_sentinel_client``).
    """
    if url.startswith(SENTINEL_SCHEME):
        # redis-py's Sentinel pool does not wait for a free connection: it
        # gets the same cap, and a command past it fails as an outage would.
        return _sentinel_client(url, max_connections or DEFAULT_POOL_SIZE)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections or DEFAULT_POOL_SIZE,
        timeout=None,
        decode_responses=True,
        health_check_interval=15,
        # Fail fast while Redis is down: the API answers 503 and the background
        # loops retry with their own backoff.
        socket_connect_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    # Connections are made on first use, from these arguments; the protocol is
    # known only now (a URL may say ?protocol=2).
    _use_our_parsing(pool)
    return aioredis.Redis.from_pool(pool)


async def connect_redis(settings: Settings) -> Redis:
    return redis_from_url(await resolve_redis_url(settings), settings.redis_pool_size)
