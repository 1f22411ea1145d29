#!/usr/bin/env python
"""POST /deploy throughput and latency, next to a bare Quart+Hypercorn JSON endpoint.

Two servers run as subprocesses on 127.0.0.1 with the same Hypercorn config
(``deployster.server.serve.hypercorn_config``): ``deployster serve`` and a tiny
Quart app from this file whose ``POST /deploy`` parses the JSON body and returns
a JSON object. The same load — ``--clients`` client processes, each keeping
``--concurrency / --clients`` keep-alive connections busy (closed loop) — sends
the same number of requests to each, after a warm-up; the two servers are
measured alternately for ``--rounds`` rounds and the medians compared. The
default client is a minimal asyncio HTTP/1.1 client (httpx costs several
times more CPU per request than the bare server and would cap its figure);
``--client httpx`` uses httpx.AsyncClient pools instead. Server (and local
Redis) CPU per request is printed too: it does not depend on the machine's
other load the way req/s does.

By default the first deploy holds the project's lock (its command waits for a
gate file), so every measured deploy is accepted and queued: the API is
measured, not the shell. After measuring, the server is stopped (queued jobs
are left in Redis) and the namespace is deleted; ``--no-gate`` lets the queue
run (one job at a time) during the measurement instead.

    python bench/deploy_throughput.py [--requests 2000] [--rounds 3] [--concurrency 64]
                                      [--clients 2] [--client raw|httpx] [--notify]

``--notify`` adds a third series on the same server: deploys to a second
project with two webhook targets (local endpoints answering 200) that want
every event, so each accepted deploy also writes a ``queued`` event to the
outbox and makes two deliveries, which that server's notifier sends while the
load runs. Its median is printed beside the plain deploys'.

Target: deploys/bare >= 0.8 (the deploy route adds at most a quarter to the
framework's own cost). The server CPU per request is the steadier figure on a
busy machine: req/s moves with whatever else runs. ``deployster serve`` tunes
the garbage collector (``serve.tune_gc``); the bare endpoint runs Python's
defaults, as a bare app would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from _harness import (
    BenchEnv,
    Server,
    Sink,
    add_common_args,
    deploy_body,
    headers,
    notify_options,
    proc_cpu_seconds,
    summary,
    verdict,
)

from deployster.keys import Keys

TARGET_RATIO = 0.8


# ------------------------------------------------------------ bare server


def serve_bare(*, asgi: bool = False) -> int:
    """The comparison endpoint: Quart + Hypercorn, same config, JSON in and out.
    ``asgi``: no framework, a plain ASGI callable answering the same JSON
    (Hypercorn's own cost: the floor any route on it pays)."""
    from hypercorn.asyncio import serve
    from quart import Quart, request

    from deployster.server import serve as deployster_serve
    from deployster.settings import Settings

    settings = Settings.from_env(token="unused")
    app: Any = plain_asgi if asgi else Quart("bare")

    if not asgi:
        @app.post("/deploy")
        async def deploy() -> dict[str, Any]:
            data = await request.get_json()
            return {"job_id": "01J0000000000000000000000", "n": len(data or {})}

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/status/<job_id>")  # status_polls.py's reference: a queued job's answer
        async def status(job_id: str) -> dict[str, Any]:
            return {"status": "queued", "logs": "", "position": len(job_id)}

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Exactly what ``deployster serve`` does: a socket bound first, handed to
        # Hypercorn by fd, with the same config.
        sock = deployster_serve.bind_socket(settings)
        try:
            config = deployster_serve.hypercorn_config(sock)
            await serve(app, config, shutdown_trigger=stop.wait)
        finally:
            sock.close()

    asyncio.run(main())
    return 0


async def plain_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The bare endpoints without a framework: ``POST /deploy`` reads and
    parses the body, anything else gets the queued ``/status`` answer."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    reply: dict[str, Any]
    if scope["method"] == "POST":
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        reply = {"job_id": "01J0000000000000000000000", "n": len(json.loads(body or b"{}"))}
    else:
        reply = {"status": "queued", "logs": "", "position": len(scope["path"])}
    data = json.dumps(reply).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


# ----------------------------------------------------------------- client


@dataclass
class ClientResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    began: float = 0.0
    ended: float = 0.0
    cpu: float = 0.0


# Every request carries its own commit hash (the server answers an identical
# request that is still queued with the queued job): this marker in the body is
# replaced by a per-process tag and a counter, always 18 characters.
COMMIT_MARK = "c0mm1tc0mm1tc0mm1t"


def commit_for(tag: str, k: int) -> str:
    return f"{tag}{k:012x}"[-len(COMMIT_MARK):]


def client_process(kind: str, url: str, body: dict[str, Any], hdrs: dict[str, str],
                   count: int, concurrency: int, start_at: float,
                   deadline: float) -> ClientResult:
    run = _raw_client if kind == "raw" else _httpx_client
    return asyncio.run(run(url, body, hdrs, count, concurrency, start_at, deadline))


async def _httpx_client(url: str, body: dict[str, Any], hdrs: dict[str, str], count: int,
                        concurrency: int, start_at: float, deadline: float) -> ClientResult:
    result = ClientResult()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=hdrs, limits=limits,
                                 timeout=60) as client:
        # Open the pool's connections before the clock starts.
        await asyncio.gather(*(client.get("/healthz") for _ in range(concurrency)))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        issued = 0
        tag = os.urandom(3).hex()

        async def worker() -> None:
            nonlocal issued
            while issued < count and time.time() < deadline:
                issued += 1
                one = {**body, "commit_hash": commit_for(tag, issued)}
                started = time.perf_counter()
                try:
                    reply = await client.post("/deploy", json=one)
                    result.statuses[reply.status_code] += 1
                except httpx.HTTPError as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                result.latencies_ms.append((time.perf_counter() - started) * 1000)

        cpu = time.process_time()
        result.began = time.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.ended = time.time()
        result.cpu = time.process_time() - cpu
    return result


class RawConnection:
    """A keep-alive HTTP/1.1 connection speaking just enough for this benchmark."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status


async def _raw_client(url: str, body: dict[str, Any], hdrs: dict[str, str], count: int,
                      concurrency: int, start_at: float, deadline: float) -> ClientResult:
    result = ClientResult()
    hostport = url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    payload = json.dumps({**body, "commit_hash": COMMIT_MARK}).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    head = (f"POST /deploy HTTP/1.1\r\nHost: {hostport}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode()
    before, after = payload.split(COMMIT_MARK.encode())
    tag = os.urandom(3).hex()
    conns = [RawConnection(host, int(port)) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    issued = 0

    async def worker(conn: RawConnection) -> None:
        nonlocal issued
        while issued < count and time.time() < deadline:
            issued += 1
            raw = head + before + commit_for(tag, issued).encode() + after
            started = time.perf_counter()
            try:
                status = await asyncio.wait_for(conn.request(raw), 60)
            except (OSError, ValueError, EOFError, TimeoutError,
                    asyncio.IncompleteReadError) as exc:
                result.errors[type(exc).__name__] += 1
                conn.close()
                continue
            result.statuses[status] += 1
            result.latencies_ms.append((time.perf_counter() - started) * 1000)

    cpu = time.process_time()
    result.began = time.time()
    await asyncio.gather(*(worker(c) for c in conns))
    result.ended = time.time()
    result.cpu = time.process_time() - cpu
    for conn in conns:
        conn.close()
    return result


@dataclass
class RunFigures:
    label: str
    requests: int
    ok: int
    wall: float
    rps: float
    lat: dict[str, float]
    server_cpu: float  # fraction of one core
    server_cpu_ms: float  # server CPU per request, ms (independent of other load)
    redis_cpu_ms: float | None  # Redis server CPU per request, ms (local Redis only)
    client_cpu: float  # fraction of one core, per client process (mean)
    errors: str


def run_load(pool: Any, server: Server, body: dict[str, Any], *, label: str, requests: int,
             concurrency: int, clients: int, timeout: float, kind: str,
             redis_pid: int | None = None) -> RunFigures:
    per_client = [requests // clients + (1 if i < requests % clients else 0)
                  for i in range(clients)]
    per_conn = max(1, concurrency // clients)
    start_at = time.time() + 1.0  # time for every process to open its pool
    deadline = start_at + timeout
    jobs = [
        pool.apply_async(client_process,
                         (kind, server.url, body, headers(), n, per_conn, start_at, deadline))
        for n in per_client
    ]
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = proc_cpu_seconds(server.pid)
    redis_before = proc_cpu_seconds(redis_pid) if redis_pid else 0.0
    results: list[ClientResult] = [job.get(timeout + 60) for job in jobs]
    cpu_after = proc_cpu_seconds(server.pid)
    redis_after = proc_cpu_seconds(redis_pid) if redis_pid else 0.0
    began = min(r.began for r in results)
    ended = max(r.ended for r in results)
    wall = max(ended - began, 1e-9)
    latencies = [x for r in results for x in r.latencies_ms]
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    for r in results:
        statuses.update(r.statuses)
        errors.update(r.errors)
    ok = statuses.get(200, 0)
    bad = {str(k): v for k, v in statuses.items() if k != 200} | dict(errors)
    return RunFigures(
        label=label, requests=len(latencies) + sum(errors.values()), ok=ok, wall=wall,
        rps=ok / wall, lat=summary(latencies) if latencies else {},
        server_cpu=(cpu_after - cpu_before) / (time.time() - start_at),
        server_cpu_ms=(cpu_after - cpu_before) * 1000 / max(1, len(latencies)),
        redis_cpu_ms=(redis_after - redis_before) * 1000 / max(1, len(latencies))
        if redis_pid else None,
        client_cpu=sum(r.cpu for r in results) / wall / len(results),
        errors=", ".join(f"{k}: {v}" for k, v in bad.items()) or "none",
    )


def print_run(f: RunFigures) -> None:
    lat = f.lat
    redis_cpu = "" if f.redis_cpu_ms is None else f", redis {f.redis_cpu_ms:.2f}"
    print(f"  {f.label:<7} {f.rps:7.0f} req/s  p50 {lat.get('p50', 0):7.2f} ms  "
          f"p99 {lat.get('p99', 0):7.2f} ms  | {f.ok}/{f.requests} ok in {f.wall:.2f}s; "
          f"CPU ms/request: server {f.server_cpu_ms:.2f}{redis_cpu}; server busy "
          f"{f.server_cpu:.0%}, clients {f.client_cpu:.0%} each; errors: {f.errors}")


def local_redis_pid(url: str) -> int | None:
    """The Redis server's pid when it runs on this machine (for its CPU figure)."""
    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server").get("process_id", 0))
    except (redis.RedisError, ValueError):
        return None
    finally:
        client.close()
    return pid if pid and Path(f"/proc/{pid}/stat").exists() else None


# ------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="measured requests per server (default 2000)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="connections in flight, over all client processes (default 64)")
    parser.add_argument("--clients", type=int, default=2,
                        help="client processes (default 2)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="raw: a minimal asyncio HTTP/1.1 keep-alive client (default; "
                        "cheap enough not to be the bottleneck); httpx: httpx.AsyncClient")
    parser.add_argument("--warmup", type=int, default=200,
                        help="unmeasured requests per server first (default 200)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measured runs per server, alternating (default 3); the "
                        "medians are compared")
    parser.add_argument("--probe", type=int, default=200,
                        help="sequential requests on one connection for the unloaded "
                        "latency (default 200; 0 to skip)")
    parser.add_argument("--no-gate", action="store_true",
                        help="let the queued deploys run during the measurement")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="cap on each measured run, seconds (default 120)")
    parser.add_argument("--notify", action="store_true",
                        help="also measure deploys to a project with two webhook targets "
                        "(every event)")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-asgi-server", action="store_true", help=argparse.SUPPRESS)
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.bare_server or args.bare_asgi_server:
        return serve_bare(asgi=args.bare_asgi_server)
    if args.requests < 1 or args.rounds < 1 or args.clients < 1 \
            or args.concurrency < args.clients:
        parser.error("need --requests, --rounds >= 1 and --concurrency >= --clients >= 1")

    ctx = multiprocessing.get_context("spawn")
    figures: dict[str, list[RunFigures]] = {"bare": [], "deploy": []}
    if args.notify:
        figures["notify"] = []
    sinks = [Sink(), Sink()] if args.notify else []
    with BenchEnv("thruput", args.redis_url, args.database_url, args.keep) as env, \
            ctx.Pool(args.clients) as pool:
        gate = env.tmp / "gate"
        env.write_stub("supervisorctl", 'echo "supervisorctl: $*"\n')
        project = env.project("thruput-app")
        bodies = {"bare": deploy_body(project, "true"), "deploy": deploy_body(project, "true")}
        projects = [project]
        if sinks:
            notified = env.project("thruput-notify", *notify_options(env, *sinks))
            bodies["notify"] = deploy_body(notified, "true")
            projects.append(notified)
        redis_pid = local_redis_pid(env.redis_url)

        dirty_key = Keys(env.namespace).dirty
        backlog: list[int] = []

        keys = Keys(env.namespace)

        def settle() -> None:
            """Let the history writer (and the notifier) catch up, so no run pays
            for the previous one."""
            client = redis.Redis.from_url(env.redis_url)
            try:
                deadline = time.monotonic() + 120
                while (client.hlen(dirty_key) or client.xlen(keys.outbox)
                       or client.zcard(keys.notify_due)) and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                client.close()

        def dirty_now() -> int:
            client = redis.Redis.from_url(env.redis_url)
            try:
                return int(client.hlen(dirty_key))
            finally:
                client.close()

        common: dict[str, Any] = {"timeout": args.timeout, "kind": args.client,
                                  "redis_pid": redis_pid}

        def run(server: Server, label: str, requests: int, *, concurrency: int,
                clients: int, series: str) -> RunFigures:
            settle()
            return run_load(pool, server, bodies[series], label=label, requests=requests,
                            concurrency=concurrency, clients=clients, **common)

        bare = Server.start(env.env(), env.tmp / "bare.log",
                            argv=[sys.executable, str(Path(__file__).resolve()),
                                  "--bare-server"])
        server = env.serve()
        if not args.no_gate:
            # A slow poll: the gate job must not steal CPU from the server.
            ticks = int((args.timeout * (2 * args.rounds + 2) + 120) * 2)
            hold = (f"i=0; while [ ! -e '{gate}' ] && [ $i -lt {ticks} ]; do sleep 0.5; "
                    "i=$((i+1)); done")
            for held in projects:
                reply = httpx.post(server.url + "/deploy", headers=headers(), timeout=30,
                                   json=deploy_body(held, hold, commit="gate"))
                if reply.status_code != 200 or reply.json().get("queued"):
                    raise SystemExit(f"gate job not started: {reply.status_code} {reply.text}")
        targets = {"bare": bare, "deploy": server}
        if sinks:
            targets["notify"] = server
        load = {"concurrency": args.concurrency, "clients": args.clients}
        for label, target in targets.items():
            run(target, "warm-up", args.warmup, **load, series=label)
        # Alternate the servers, so a change in the machine's other load hits
        # each alike.
        for round_no in range(1, args.rounds + 1):
            for label, target in targets.items():
                figures[label].append(run(target, f"{label}#{round_no}", args.requests, **load,
                                          series=label))
                if label == "deploy":
                    backlog.append(dirty_now())
        probes = [run(target, f"{label}/1", args.probe, concurrency=1, clients=1, series=label)
                  for label, target in targets.items()] if args.probe > 0 else []
        with redis.Redis.from_url(env.redis_url) as client:
            queued = sum(int(client.zcard(key))
                         for key in client.scan_iter(Keys(env.namespace).queue("*")))
        sent = (args.warmup + args.requests * args.rounds + (args.probe if probes else 0)) \
            * (len(targets) - 1)
        gate.touch()
        bare.stop()
        server.stop()

    bare_rps = statistics.median(f.rps for f in figures["bare"])
    dep_rps = statistics.median(f.rps for f in figures["deploy"])
    bare_cpu = statistics.median(f.server_cpu_ms for f in figures["bare"])
    dep_cpu = statistics.median(f.server_cpu_ms for f in figures["deploy"])
    dep_p50 = statistics.median(f.lat.get("p50", 0.0) for f in figures["deploy"])
    bare_p50 = statistics.median(f.lat.get("p50", 0.0) for f in figures["bare"])
    ratio = dep_rps / bare_rps if bare_rps else 0.0
    rounds = [d.rps / b.rps for b, d in zip(figures["bare"], figures["deploy"], strict=True)
              if b.rps]
    print(f"deploy_throughput: {args.rounds} rounds x {args.requests} POST /deploy per server, "
          f"{args.concurrency} connections over {args.clients} {args.client} client "
          f"processes, warm-up {args.warmup} (redis {env.redis_kind}, {env.database_kind}, "
          f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}; deploys "
          f"{'run' if args.no_gate else 'queued behind a held job'}"
          + (f"; */1 = one connection, {args.probe} sequential requests)" if probes else ")"))
    for round_no in range(args.rounds):
        for series in figures.values():
            print_run(series[round_no])
    for fig in probes:
        print_run(fig)
    print(f"  jobs queued by the deploy server: {queued} for {sent} requests "
          "(each request has its own commit, so none is answered by an identical queued job)")
    print(f"  history writer backlog right after each deploy run: "
          f"{', '.join(map(str, backlog))} jobs (every run starts with it at 0)")
    print(f"  median: bare {bare_rps:.0f} req/s (p50 {bare_p50:.1f} ms), deploy {dep_rps:.0f} "
          f"req/s (p50 {dep_p50:.1f} ms); server CPU/request bare {bare_cpu:.2f} ms, "
          f"deploy {dep_cpu:.2f} ms (ratio {bare_cpu / dep_cpu:.2f})")
    print(f"  ratio deploys/bare {ratio:.2f} (per round: "
          f"{', '.join(f'{r:.2f}' for r in rounds)})   target >= {TARGET_RATIO:g}: "
          f"{verdict(ratio >= TARGET_RATIO)}")
    if sinks:
        not_rps = statistics.median(f.rps for f in figures["notify"])
        not_cpu = statistics.median(f.server_cpu_ms for f in figures["notify"])
        not_p99 = statistics.median(f.lat.get("p99", 0.0) for f in figures["notify"])
        dep_p99 = statistics.median(f.lat.get("p99", 0.0) for f in figures["deploy"])
        print(f"  two notification targets (every event): {not_rps:.0f} req/s (p99 "
              f"{not_p99:.1f} ms), server CPU/request {not_cpu:.2f} ms; without targets "
              f"{dep_rps:.0f} req/s (p99 {dep_p99:.1f} ms), {dep_cpu:.2f} ms; with/without "
              f"{not_rps / dep_rps:.2f}; webhook requests received "
              f"{sum(s.count for s in sinks)}")
        for sink in sinks:
            sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
