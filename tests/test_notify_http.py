"""The notifier's HTTP client (``deployster/notify/http.py``) against raw local
servers: what it sends, the answers it reads, and one error for no answer."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from deployster.notify import http
from tests.helpers.server import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_post_sends_the_body_and_reads_a_chunked_answer() -> None:
    seen: dict[str, bytes] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        seen["head"], seen["body"] = head, await reader.readexactly(length)
        writer.write(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
                     b"X-Thing: yes\r\n\r\n4\r\n{\"id\r\n5\r\n\": 7}\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with serving(handler) as url:
        base = url.replace("http://", "http://ci:p%40ss@")
        answer = await http.post(f"{base}/hook?x=1", b'{"a": 1}', {"X-Event": "complete"})
    assert (answer.status, answer.json(), answer.headers["x-thing"]) == (201, {"id": 7}, "yes")
    lines = seen["head"].decode().split("\r\n")
    assert lines[0] == "POST /hook?x=1 HTTP/1.1"
    assert "X-Event: complete" in lines and "Connection: close" in lines
    assert f"Authorization: Basic {base64.b64encode(b'ci:p@ss').decode()}" in lines
    assert seen["body"] == b'{"a": 1}'


async def test_an_answer_until_the_connection_closes_and_a_status_without_reason() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 503\r\n\r\nbusy")
        await writer.drain()
        writer.close()

    async with serving(handler) as url:
        answer = await http.post(url, b"", {})
    assert (answer.status, answer.body) == (503, b"busy")


@pytest.mark.parametrize("reply", [b"SSH-2.0-OpenSSH_9.6\r\n", b""])
async def test_no_http_answer_is_one_error(reply: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(reply)
        await writer.drain()
        writer.close()

    async with serving(handler) as url:
        with pytest.raises(http.HttpError, match="answer"):
            await http.post(url, b"{}", {})


async def test_a_closed_port_is_one_error() -> None:
    with pytest.raises(http.HttpError, match="cannot connect"):
        await http.post(f"http://127.0.0.1:{free_port()}/x", b"{}", {})
