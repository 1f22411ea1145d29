"""The fault-injecting Redis proxy of ``tests/helpers/redis_proxy.py``: what other
tests rely on it for, checked against the real Redis with a plain redis-py client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.helpers.redis_proxy import RedisProxy, command, script


@pytest.fixture
def proxy(redis_url: str) -> Iterator[RedisProxy]:
    with RedisProxy(redis_url) as the_proxy:
        yield the_proxy


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def through(proxy: RedisProxy) -> redis.Redis:
    """A client that does not retry: each lost reply is an error the test sees."""
    return redis.Redis.from_url(proxy.url, retry_on_error=[], retry=None)


def test_a_lost_reply_was_executed_and_the_connection_cut(
    proxy: RedisProxy, direct: redis.Redis, namespace: str
) -> None:
    key = f"{namespace}:n"
    client = through(proxy)
    assert client.ping()
    trap = proxy.lose_reply(command("incrby"))
    with pytest.raises(redis.ConnectionError):
        client.incr(key)  # redis-py sends INCRBY
    assert trap.wait(5) and trap.fired == 1
    assert direct.get(key) == b"1"  # Redis ran it
    assert client.incr(key) == 2  # the rule is used up; a new connection works
    assert proxy.connections == 2
    client.close()


def test_commands_after_the_doomed_one_never_reach_redis(
    proxy: RedisProxy, direct: redis.Redis, namespace: str
) -> None:
    client = through(proxy)
    proxy.lose_reply(command("incrby"))
    pipe = client.pipeline(transaction=False)
    pipe.set(f"{namespace}:before", 1)
    pipe.incr(f"{namespace}:n")
    pipe.set(f"{namespace}:after", 1)
    with pytest.raises(redis.ConnectionError):
        pipe.execute()
    assert direct.get(f"{namespace}:before") == b"1"
    assert direct.get(f"{namespace}:n") == b"1"
    assert direct.get(f"{namespace}:after") is None
    client.close()


def test_a_script_rule_skips_noscript_and_catches_the_run(
    proxy: RedisProxy, direct: redis.Redis, namespace: str
) -> None:
    """A script Redis has not cached yet: the first EVALSHA is refused
    (NOSCRIPT), redis-py loads it and sends it again; that one is the run."""
    source = f"-- {uuid.uuid4().hex}\nreturn redis.call('INCR', KEYS[1])"
    client = through(proxy)
    run = client.register_script(source)
    trap = proxy.lose_reply(script(source), times=2)
    for _ in range(2):
        with pytest.raises(redis.ConnectionError):
            run(keys=[f"{namespace}:n"])
    assert trap.fired == 2
    assert direct.get(f"{namespace}:n") == b"2"
    assert run(keys=[f"{namespace}:n"]) == 3
    client.close()


def test_lose_replies_for_a_while_then_answer_again(
    proxy: RedisProxy, direct: redis.Redis, namespace: str
) -> None:
    client = through(proxy)
    window = proxy.lose_replies(command("incrby"), 0.5)
    until = time.monotonic() + 0.4
    lost = 0
    while time.monotonic() < until:
        with pytest.raises(redis.ConnectionError):
            client.incr(f"{namespace}:n")
        lost += 1
    assert window.wait(5) and window.fired == lost > 0
    assert client.incr(f"{namespace}:n") == window.fired + 1
    client.close()


def test_cut_all_drops_every_connection_and_refuses_new_ones_for_a_while(
    proxy: RedisProxy,
) -> None:
    first, second = through(proxy), through(proxy)
    assert first.ping() and second.ping()
    started = time.monotonic()
    proxy.cut_all(1.0)
    assert proxy.down
    for client in (first, second):
        with pytest.raises(redis.ConnectionError):
            client.ping()
    while proxy.down:
        time.sleep(0.05)
    assert time.monotonic() - started >= 1.0
    assert first.ping() and second.ping()
    first.close()
    second.close()
