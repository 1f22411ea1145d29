"""The notifier's HTTP client: aiohttp, one session per ``Notifier``.

Why a library: a webhook ``POST`` is no part of what deployster exists for,
and a well-kept client (TLS, chunked and compressed answers, keep-alive, a C
parser) beats the 131 lines of our own that stood here. Why aiohttp and not
httpx: the client runs in the server's event loop beside the jobs, and httpx
cost ~5 ms of CPU per request there (its pool's bookkeeping and a failed
``import sniffio`` per call), which showed in ``bench/handoff.py --notify``'s
hand-off p99; aiohttp costs a fraction of that (the figures: this file's
commit message).

What it does: a ``POST`` of a body it has in memory to an ``http`` or
``https`` URL, TLS verified against the system's CA certificates (aiohttp's
default context, ``ssl.create_default_context()`` made at import, so
``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are honoured as the server starts), a
user and password in the URL sent as Basic auth, and the answer's status,
headers and body (within ``MAX_BODY``). Connections to a host are kept alive
between requests. No redirects are followed (a 3xx is an answer like any
other); no proxy, ``~/.netrc`` or cookie jar is used (``trust_env`` off: the
same requests as ever go to the same places). Each request has a total
timeout (``DEPLOYSTER_NOTIFY_TIMEOUT``) and raises ``TimeoutError`` past it;
every other failure to get an answer raises ``HttpError``, whose text never
holds the URL (a Slack or Discord URL is a credential, see
``NotifyTarget.shown_url`` in ``deployster/models.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from .. import __version__

MAX_BODY = 1024 * 1024  # an answer's body beyond this is cut (it is only logged)
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


class Client:
    """One ``aiohttp.ClientSession``, made in the running loop at the first
    ``post`` and ended by ``close``; ``timeout``: seconds a request may take."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """``POST`` ``body`` to ``url`` with ``headers``; raises ``HttpError``,
        or ``TimeoutError`` after ``timeout`` seconds."""
        try:
            async with self._open().post(url, data=body, headers=headers,
                                         allow_redirects=False) as answer:
                data = bytearray()
                async for chunk in answer.content.iter_any():
                    data += chunk[:MAX_BODY - len(data)]
                    if len(data) >= MAX_BODY:
                        break
                return Response(answer.status,
                                {name.lower(): value for name, value in answer.headers.items()},
                                bytes(data))
        except TimeoutError:
            raise  # aiohttp's timeouts are ClientErrors too; the caller tells them apart
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # One line (a parser's message spans several), and no URL.
            raise HttpError(" ".join(_hide(url, _describe(exc)).split())) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return "not an http(s) URL"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"cannot connect: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Its own text names the host and port; the OS's reason is what tells.
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "no answer: the connection was closed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"no answer: {exc.message}"  # its str() ends with the URL
    return f"no answer: {type(exc).__name__}: {exc}"


def _hide(url: str, text: str) -> str:
    """``text`` without ``url`` or its path (for any message not foreseen)."""
    try:
        parsed = URL(url)
    except ValueError:
        return text.replace(url, "<url>")
    for shown in (url, str(parsed), parsed.raw_path_qs, parsed.path_qs):
        if len(shown) > 1:
            text = text.replace(shown, "<url>")
    return text
