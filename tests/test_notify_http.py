"""The notifier's HTTP client (``deployster/notify/http.py``, aiohttp) against
raw local servers: what it sends, the answers it reads, no redirect followed,
its timeout, and one error for no answer that never shows the URL."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from deployster.notify import http
from tests.helpers.server import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
SECRET_PATH = "/services/T000/B000/s3cr3tT0ken"  # a Slack URL's path is its credential


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def answering(reply: bytes, seen: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head)
        writer.write(reply)
        await writer.drain()
        writer.close()
    return handler


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

    async with serving(handler) as url, http.Client(5.0) as client:
        base = url.replace("http://", "http://ci:p%40ss@")
        answer = await client.post(f"{base}/hook?x=1", b'{"a": 1}', {"X-Event": "complete"})
    assert (answer.status, answer.json(), answer.headers["x-thing"]) == (201, {"id": 7}, "yes")
    lines = seen["head"].decode().split("\r\n")
    assert lines[0] == "POST /hook?x=1 HTTP/1.1"
    assert "X-Event: complete" in lines and f"User-Agent: {http.USER_AGENT}" in lines
    assert f"Authorization: Basic {base64.b64encode(b'ci:p@ss').decode()}" in lines
    assert seen["body"] == b'{"a": 1}'


async def test_an_answer_until_the_connection_closes_and_a_status_without_reason() -> None:
    async with serving(await answering(b"HTTP/1.0 503\r\n\r\nbusy")) as url, \
            http.Client(5.0) as client:
        answer = await client.post(url, b"", {})
    assert (answer.status, answer.body) == (503, b"busy")


async def test_a_long_answer_is_cut_at_max_body() -> None:
    size = http.MAX_BODY + 4096
    reply = f"HTTP/1.1 500 Oops\r\nContent-Length: {size}\r\n\r\n".encode() + b"x" * size
    async with serving(await answering(reply)) as url, http.Client(5.0) as client:
        answer = await client.post(url, b"{}", {})
    assert (answer.status, len(answer.body)) == (500, http.MAX_BODY)


async def test_a_redirect_is_an_answer_not_followed() -> None:
    seen: list[bytes] = []
    async with serving(await answering(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n"
                                       b"Content-Length: 0\r\n\r\n", seen)) as url, \
            http.Client(5.0) as client:
        answer = await client.post(f"{url}/hook", b"{}", {})
    assert (answer.status, answer.headers["location"]) == (302, "/elsewhere")
    assert [head.split(b"\r\n")[0] for head in seen] == [b"POST /hook HTTP/1.1"]


async def test_a_target_that_never_answers_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)

    async with serving(handler) as url, http.Client(0.2) as client:
        with pytest.raises(TimeoutError):
            await client.post(url, b"{}", {})


@pytest.mark.parametrize("reply", [b"SSH-2.0-OpenSSH_9.6\r\n", b""])
async def test_no_http_answer_is_one_error_without_the_url(reply: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(reply)
        await writer.drain()
        writer.close()

    async with serving(handler) as url, http.Client(5.0) as client:
        with pytest.raises(http.HttpError, match="answer") as raised:
            await client.post(url + SECRET_PATH, b"{}", {})
    assert "s3cr3tT0ken" not in str(raised.value)


async def test_a_closed_port_is_one_error_without_the_url() -> None:
    async with http.Client(5.0) as client:
        with pytest.raises(http.HttpError, match="cannot connect") as raised:
            await client.post(f"http://127.0.0.1:{free_port()}{SECRET_PATH}", b"{}", {})
    assert "s3cr3tT0ken" not in str(raised.value)


TLS_CHECK = """
import asyncio, sys
from deployster.notify import http

async def main() -> None:
    async with http.Client(5.0) as client:
        try:
            print((await client.post(sys.argv[1], b"{}", {})).status)
        except http.HttpError as exc:
            print(exc)

asyncio.run(main())
"""


def test_tls_is_verified_against_ssl_cert_file(tmp_path: Path) -> None:
    """A certificate of no known authority is refused; named in
    ``SSL_CERT_FILE`` (as a server behind a private CA would be run), it is
    trusted. In a subprocess: the CA file is read as aiohttp is imported."""
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def run() -> list[str]:
        handler = await answering(b"HTTP/1.1 204 No Content\r\n\r\n")
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
        url = f"https://localhost:{server.sockets[0].getsockname()[1]}/hook"
        out = []
        for extra in ({}, {"SSL_CERT_FILE": str(cert)}):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", TLS_CHECK, url, stdout=subprocess.PIPE,
                env={**os.environ, **extra})
            stdout, _ = await proc.communicate()
            out.append(stdout.decode().strip())
        server.close()
        return out

    refused, trusted = asyncio.run(run())
    assert refused.startswith("cannot connect:") and "CERTIFICATE_VERIFY_FAILED" in refused
    assert trusted == "204"
