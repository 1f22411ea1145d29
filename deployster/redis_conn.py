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
        # Fail fast while Redis is down: the API answers 503 and the background
        # loops retry with their own backoff.
        socket_connect_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def connect_redis(settings: Settings) -> Redis:
    return redis_from_url(await resolve_redis_url(settings))
