"""The notifier's HTTP client: one ``POST`` over asyncio streams, HTTP/1.1.

Why not httpx: it runs in the server's event loop beside the jobs, and there
its cost per request (~5 ms of CPU, measured with two targets and every event
in ``bench/handoff.py --notify``, most of it in the connection pool's
bookkeeping and a failed ``import sniffio`` per call) showed in the hand-off
p99 of the jobs around it. This is what the notifier needs and no more, at a
small fraction of that: a ``POST`` of a body it has in memory, to ``http`` or
``https`` (the system's CA certificates, SNI), a user and password in the URL
as Basic auth, and the answer's status, headers and body (``Content-Length``,
chunked, or up to the connection's end), within ``MAX_BODY``. One connection
per request (``Connection: close``): a deploy sends a few notifications, not
hundreds a second. No redirects are followed (a 3xx is an answer like any
other) and no proxy is used. Every failure to get an answer raises
``HttpError``; the caller's ``asyncio.timeout`` bounds the whole request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import unquote, urlsplit

from .. import __version__

MAX_BODY = 1024 * 1024  # an answer's body beyond this is cut (it is only logged)
MAX_HEADERS = 100
USER_AGENT = f"deployster/{__version__}"


class HttpError(Exception):
    """No answer: the connection failed or the answer was no HTTP."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


async def post(url: str, body: bytes, headers: dict[str, str]) -> Response:
    """``POST`` ``body`` to ``url`` with ``headers``; raises ``HttpError``."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise HttpError("not an http(s) URL")
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = host if ":" not in host else f"[{host}]"
    if parts.port:
        authority += f":{parts.port}"
    lines = [f"POST {target} HTTP/1.1", f"Host: {authority}", f"User-Agent: {USER_AGENT}",
             f"Content-Length: {len(body)}", "Connection: close"]
    if parts.username is not None:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append("Authorization: Basic " + base64.b64encode(user.encode()).decode())
    lines += [f"{name}: {value}" for name, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=_tls() if secure else None, server_hostname=host if secure else None,
            limit=64 * 1024)
    except (OSError, ssl.SSLError) as exc:
        raise HttpError(f"cannot connect: {exc.strerror or exc}"
                        if isinstance(exc, OSError) and exc.strerror else
                        f"cannot connect: {exc}") from None
    try:
        writer.write(head + body)
        await writer.drain()
        return await _read_response(reader)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ValueError) as exc:
        raise HttpError(f"no answer: {type(exc).__name__}: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> Response:
    status_line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest.split(" ", 1)[0]
    if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
        raise HttpError(f"not an HTTP answer: {status_line[:60]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    else:
        raise HttpError("too many header lines")
    return Response(int(code), headers, await _read_body(reader, headers))


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        size = 0
        while True:
            length = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
            if length == 0:
                return b"".join(parts)
            chunk = await reader.readexactly(length)
            await reader.readline()  # the chunk's CRLF
            if size < MAX_BODY:
                parts.append(chunk[:MAX_BODY - size])
                size += len(chunk)
    if "content-length" in headers:
        length = int(headers["content-length"])
        data = await reader.readexactly(min(length, MAX_BODY))
        return data
    return await reader.read(MAX_BODY)
