"""Opening the Redis connection the settings ask for."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .embedded_redis import ensure_embedded_redis
from .settings import Settings

Redis = aioredis.Redis

# What a dropped or refused connection raises; callers turn it into a 503.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


async def resolve_redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    return await asyncio.to_thread(ensure_embedded_redis, settings.data_dir)


def redis_from_url(url: str) -> Redis:
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=15,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def connect_redis(settings: Settings) -> Redis:
    return redis_from_url(await resolve_redis_url(settings))
