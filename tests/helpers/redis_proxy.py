"""A TCP proxy in front of Redis that loses replies and cuts connections on cue.

Put it between a deployster server and Redis (``DEPLOYSTER_REDIS_URL=proxy.url``)
to inject, for real, the faults a network or a Redis restart causes:

* ``lose_reply(match, times=1)``: the next ``times`` commands that ``match`` go
  to Redis, which executes them; each one's reply is dropped and its connection
  cut, so the client never hears back. (redis-py then reconnects and, with
  ``retry_on_error``, sends the same command again: what an idempotent script
  must survive.)
* ``lose_replies(match, seconds)``: the same for every matching command during
  ``seconds`` (the retries too).
* ``cut_all(seconds)``: cut every open connection now, and for ``seconds``
  accept new ones only to close them at once: Redis unreachable for a while.

Matchers: ``command("XADD")`` (a command by name), ``script(source)`` (an
``EVALSHA`` of that Lua source, as redis-py's ``register_script`` sends it, or
an ``EVAL`` of it), or any ``Callable[[Command], bool]``::

    with RedisProxy(redis_url) as proxy:
        live = start_server(settings, log_path, {"DEPLOYSTER_REDIS_URL": proxy.url})
        trap = proxy.lose_reply(script(APPEND.source))  # redis_scripts.APPEND
        assert trap.wait(10)  # Redis ran it; the server never heard back
        proxy.cut_all(1.0)

How: the client→Redis bytes are parsed as RESP commands and the Redis→client
bytes as RESP replies (RESP2 and RESP3), and a reply is paired with its command
by their order on the connection, so pipelines and MULTI/EXEC work. A pub/sub
connection's messages are no replies to anything: aim no rule at the commands
of a connection that subscribes. Bytes go through one whole command or reply at
a time, and the commands after a claimed one wait until its reply is in (Redis
runs none of them when the connection is cut). A claim whose command did not
run after all (a ``NOSCRIPT`` reply: redis-py loads the script and sends it
again) or whose connection died first is given back, for the next command.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

_CRLF = b"\r\n"
_RECV = 64 * 1024


@dataclass(frozen=True)
class Command:
    """One command as the client sent it: ``name`` upper-case, ``args`` raw."""

    name: str
    args: tuple[bytes, ...]

    @property
    def script_sha(self) -> str | None:
        """The SHA1 of the Lua script an EVALSHA/EVAL runs (lower-case hex), else None."""
        if not self.args:
            return None
        if self.name in ("EVALSHA", "EVALSHA_RO"):
            return self.args[0].decode("ascii", "replace").lower()
        if self.name in ("EVAL", "EVAL_RO"):
            return hashlib.sha1(self.args[0]).hexdigest()
        return None


Matcher = Callable[[Command], bool]


def command(name: str) -> Matcher:
    """Matches every command called ``name`` (any case)."""
    wanted = name.upper()
    return lambda cmd: cmd.name == wanted


def script(source: str | bytes) -> Matcher:
    """Matches running the Lua script ``source`` (EVALSHA of its SHA1, or EVAL)."""
    raw = source.encode("utf-8") if isinstance(source, str) else source
    sha = hashlib.sha1(raw).hexdigest()
    return lambda cmd: cmd.script_sha == sha


class Trap:
    """A ``lose_reply``/``lose_replies`` rule and how many replies it dropped."""

    def __init__(self, match: Matcher, times: int | None, until: float | None = None) -> None:
        self.match = match
        self.times = times
        self.until = until  # monotonic end of a ``lose_replies`` window
        self.remaining = times  # not yet claimed by a command (None: no limit)
        self.fired = 0  # replies dropped so far
        self._done = threading.Event()

    def wait(self, timeout: float) -> bool:
        """Block until all ``times`` replies were dropped (a window: until it
        ended, with at least one dropped); False on timeout."""
        if self.until is None:
            return self._done.wait(timeout)
        time.sleep(max(0.0, min(timeout, self.until - time.monotonic())))
        return time.monotonic() >= self.until and self.fired > 0

    def _claim(self, cmd: Command) -> bool:
        if self.until is not None:
            return time.monotonic() < self.until and self.match(cmd)
        if self.remaining and self.match(cmd):
            self.remaining -= 1
            return True
        return False

    def _give_back(self) -> None:
        if self.remaining is not None:
            self.remaining += 1

    def _fire(self) -> None:
        self.fired += 1
        if self.times is not None and self.fired >= self.times:
            self._done.set()


# ----------------------------------------------------------------- RESP


def _parse_command(buf: bytearray, pos: int) -> tuple[Command, int] | None:
    """The command starting at ``buf[pos]`` and where it ends; None if incomplete."""
    if pos >= len(buf):
        return None
    end = buf.find(_CRLF, pos)
    if end < 0:
        return None
    if buf[pos] != ord("*"):  # an inline command (telnet style)
        words = bytes(buf[pos:end]).split()
        name = words[0].decode("utf-8", "replace").upper() if words else ""
        return Command(name, tuple(words[1:])), end + 2
    count = int(buf[pos + 1 : end])
    spans = []
    p = end + 2
    for _ in range(max(count, 0)):
        e = buf.find(_CRLF, p)
        if e < 0:
            return None
        if buf[p] != ord("$"):
            raise ValueError(f"not a RESP command: {bytes(buf[p : p + 20])!r}")
        start = e + 2
        stop = start + int(buf[p + 1 : e])
        if stop + 2 > len(buf):
            return None
        spans.append((start, stop))
        p = stop + 2
    args = [bytes(buf[a:b]) for a, b in spans]
    name = args[0].decode("utf-8", "replace").upper() if args else ""
    return Command(name, tuple(args[1:])), p


def _reply_end(buf: bytearray, pos: int) -> int | None:
    """Where the RESP value starting at ``buf[pos]`` ends; None if incomplete."""
    if pos >= len(buf):
        return None
    end = buf.find(_CRLF, pos)
    if end < 0:
        return None
    kind = bytes(buf[pos : pos + 1])
    if kind in (b"+", b"-", b":", b"_", b",", b"#", b"("):
        return end + 2
    size = int(buf[pos + 1 : end])
    if kind in (b"$", b"!", b"="):
        if size < 0:
            return end + 2
        stop = end + 2 + size + 2
        return stop if stop <= len(buf) else None
    if kind in (b"*", b"~", b">", b"%", b"|"):
        p: int | None = end + 2
        for _ in range(size * 2 if kind in (b"%", b"|") else max(size, 0)):
            p = _reply_end(buf, p) if p is not None else None
            if p is None:
                return None
        if kind == b"|":  # attributes come before the value they describe
            return _reply_end(buf, p) if p is not None else None
        return p
    raise ValueError(f"not a RESP reply: {bytes(buf[pos : pos + 20])!r}")


# ----------------------------------------------------------------- proxy


class _Link:
    """One client connection and its own connection to Redis."""

    def __init__(self, proxy: RedisProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        # Client bytes not yet forwarded: the commands after a doomed one wait
        # here (Redis must not run them before we know it ran the doomed one).
        self._requests_buf = bytearray()
        self._sent = 0  # commands forwarded so far on this connection
        # The index (on this connection) of the command whose reply is to be
        # dropped, and the rule that claimed it.
        self.doomed: int | None = None
        self.trap: Trap | None = None
        self._lock = threading.Lock()
        self._cut = False

    def start(self) -> None:
        threading.Thread(target=self._requests, daemon=True, name="redis-proxy-c2s").start()
        threading.Thread(target=self._replies, daemon=True, name="redis-proxy-s2c").start()

    def cut(self) -> None:
        with self._lock:
            if self._cut:
                return
            self._cut = True
            # Claimed by a command whose reply never came: for the next one.
            unfired, self.trap = self.trap, None
        if unfired is not None:
            self.proxy._give_back(unfired)
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.proxy._forget(self)

    def _forward_requests(self) -> None:
        """Forward every whole command buffered, up to and including one a rule
        claims; hold the rest. Called with ``_lock`` held."""
        buf = self._requests_buf
        pos = 0
        while self.doomed is None and (parsed := _parse_command(buf, pos)) is not None:
            cmd, pos = parsed
            trap = self.proxy._claim(cmd)
            if trap is not None:
                self.trap, self.doomed = trap, self._sent
            self._sent += 1
        if pos:
            self.upstream.sendall(buf[:pos])
            del buf[:pos]

    def _requests(self) -> None:
        try:
            while data := self.client.recv(_RECV):
                with self._lock:
                    self._requests_buf += data
                    self._forward_requests()
        except (OSError, ValueError):
            pass
        if self.doomed is None:
            self.cut()

    def _replies(self) -> None:
        buf = bytearray()
        index = 0  # replies seen so far on this connection
        try:
            while data := self.upstream.recv(_RECV):
                buf += data
                pos = 0
                while (end := _reply_end(buf, pos)) is not None:
                    if buf[pos] != ord(">"):  # a RESP3 push answers no command
                        if index == self.doomed:
                            if buf.startswith(b"-NOSCRIPT", pos):
                                # The script did not run (redis-py loads it and
                                # sends it again): let this pass, the rule waits.
                                self._spare()
                            else:
                                # Redis ran it: the client must never hear so.
                                self.client.sendall(buf[:pos])
                                self._doom()
                                return
                        index += 1
                    pos = end
                if pos:
                    self.client.sendall(buf[:pos])
                    del buf[:pos]
        except (OSError, ValueError):
            pass
        self.cut()

    def _spare(self) -> None:
        with self._lock:
            trap, self.trap, self.doomed = self.trap, None, None
            if trap is not None:
                self.proxy._give_back(trap)
            self._forward_requests()

    def _doom(self) -> None:
        with self._lock:
            trap, self.trap, self.doomed = self.trap, None, None
        if trap is not None:
            self.proxy._fire(trap)
        self.cut()


class RedisProxy:
    """A proxy on 127.0.0.1:<free port> to the Redis at ``upstream_url``.

    ``url`` is the same URL (database, credentials) through the proxy. Use as a
    context manager, or call ``close()``: it stops listening and cuts every
    connection.
    """

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        self.url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        self.connections = 0  # accepted and passed on to Redis, over the proxy's life
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._traps: list[Trap] = []
        self._down_until = 0.0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="redis-proxy-accept").start()

    def __enter__(self) -> RedisProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- faults
    def lose_reply(self, match: Matcher, *, times: int = 1) -> Trap:
        """Drop the reply to (and cut the connection of) each of the next ``times``
        commands matching ``match``, after Redis has executed it."""
        trap = Trap(match, times)
        with self._lock:
            self._traps.append(trap)
        return trap

    def lose_replies(self, match: Matcher, seconds: float) -> Trap:
        """For ``seconds`` from now, drop the reply to every command matching
        ``match`` (each after Redis executed it) and cut its connection: a
        client that retries has each retry executed and unanswered too."""
        trap = Trap(match, None, time.monotonic() + seconds)
        with self._lock:
            self._traps.append(trap)
        return trap

    def cut_all(self, seconds: float = 0.0) -> None:
        """Cut every open connection; refuse new ones for ``seconds`` (returns at once)."""
        with self._lock:
            self._down_until = max(self._down_until, time.monotonic() + seconds)
            links = list(self._links)
        for link in links:
            link.cut()

    @property
    def down(self) -> bool:
        """Whether a ``cut_all`` is still refusing connections."""
        return time.monotonic() < self._down_until

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut_all()

    # -- internals
    def _claim(self, cmd: Command) -> Trap | None:
        with self._lock:
            for trap in self._traps:
                if trap._claim(cmd):
                    return trap
        return None

    def _give_back(self, trap: Trap) -> None:
        with self._lock:
            trap._give_back()

    def _fire(self, trap: Trap) -> None:
        with self._lock:
            trap._fire()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                with contextlib.suppress(OSError):
                    client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                with contextlib.suppress(OSError):
                    client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links.add(link)
                self.connections += 1
            link.start()
