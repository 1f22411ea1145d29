"""Prometheus metrics: what ``GET /metrics`` shows (README.md#metrics).

Every value is read from the shared state when it is scraped, never counted
in one process's memory, so each server process on one Redis reports the
same figures and a restart resets nothing:

- **counters** live in Redis and are incremented in the step that makes the
  change they count: a job's end in queue.lua's ``end_job`` (its status,
  reason, duration bucket and summed duration: ``redis_scripts/metrics.lua``),
  a log append in ``append.lua`` (bytes), a job's first process by the
  dispatcher that starts it (the hand-off: two HINCRBYs in the round trip that
  records the process, ``count_handoff``), a notification attempt by
  ``notify_settle.lua`` as the notifier settles it (``notification_counter``);
- **gauges** are the state itself: the lock and its TTL, the queue and its
  head, the job running, the runners' and nodes' announcements (Redis); the
  projects and their settings (the registry, SQL, cached).

Redis keys (docs/redis.md#keys):

- ``deployster:metrics:<project>``, a hash: ``ended:<status>:<reason>:<bucket>``
  (jobs that ended so; ``<bucket>`` the upper bound in ms of the duration
  bucket, ``inf`` past the last, ``-`` for a job that never ran),
  ``duration_ms:<status>`` (summed durations of the jobs that ran), and
  ``log_bytes``. Deleted with its project.
- ``deployster:metrics``, a hash: ``handoff:<bound µs>`` / ``handoff:inf``
  (hand-offs per bucket) and ``handoff_sum_us``.
- ``deployster:metrics:notify``, a hash: ``<kind>:delivered`` and
  ``<kind>:failed`` (each failed attempt, a retried one each time; a delivery
  dropped because its target was removed counts neither); absent, every known
  kind reads zero.

Deploys started are not counted apart (a claim, on every hand-off, stays
free of it): a job that ran is counted once at its end, so started = ended
after running + the job running now, both moving in one script step.

The counters only grow while Redis keeps its data. After a loss (no AOF, a
FLUSHALL, a new Redis) they start again from zero, which Prometheus's
``rate()`` and ``increase()`` take as a counter reset; gauges are state and
are right at the next scrape.

A scrape is one round trip (``metrics_read.lua``, one call per ``CHUNK``
projects, pipelined, so Redis serves other clients between them) and a few
commands per project: its cost grows with the number of projects, never with
the history.
"""

from __future__ import annotations

import asyncio
import json
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from . import fleet, recovery
from .ids import created_ms
from .keys import Keys
from .models import JobStatus, Project, Reason
from .service import Deployster

# The Prometheus text format, version 0.0.4: what every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A deploy's duration, seconds (metrics.lua keeps the same bounds in ms).
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
                    3600.0)
# A hand-off, seconds: the target is a p99 under 5 ms (bench/handoff.py).
HANDOFF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Notification targets, each reported (from zero) whether it ever sent anything.
NOTIFY_KINDS = ("webhook", "slack", "discord", "github")
# Projects one metrics_read.lua call reads: Redis runs a script alone, so a
# call is kept short (under a millisecond: bench/metrics_scrape.py) and other
# clients' commands go in between.
CHUNK = 50

_DURATION_MS = tuple(round(b * 1000) for b in DURATION_BUCKETS)
_HANDOFF_US = tuple(round(b * 1_000_000) for b in HANDOFF_BUCKETS)
# Every end a job can have, each reported from zero: a series that appears at
# 1 hides that first end from increase() (and from an alert on it).
ENDS = ((JobStatus.COMPLETE.value, ""), *((JobStatus.FAILED.value, r.value) for r in Reason))


# ------------------------------------------------------------------ counting


def count_handoff(pipe: Any, keys: Keys, seconds: float) -> None:
    """Queue on ``pipe`` (a Redis pipeline) the count of one hand-off of
    ``seconds``: the time from a job's claim (the lock freed by the job before
    it, or the request that found it free) to its first process started."""
    us = max(0, round(seconds * 1_000_000))
    at = bisect_left(_HANDOFF_US, us)
    bucket = str(_HANDOFF_US[at]) if at < len(_HANDOFF_US) else "inf"
    pipe.hincrby(keys.metrics, f"handoff:{bucket}", 1)
    pipe.hincrby(keys.metrics, "handoff_sum_us", us)


def notification_counter(kind: str, *, delivered: bool) -> str:
    """The counter of one attempt at a ``kind`` target (``webhook``, ``slack``,
    ``discord``, ``github``) in ``Keys.notify_metrics``: what
    ``Scripts.notify_settle`` adds one to (``counted``)."""
    return f"{kind}:{'delivered' if delivered else 'failed'}"


# ------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ProjectState:
    project: Project
    lock_holder: str | None
    lock_ttl_ms: int  # -2 when free, -1 when held without expiry
    queue_length: int
    oldest_queued_ms: int | None  # when the head of the queue was requested (epoch ms)
    running: bool  # the job that claimed the lock last is still running
    running_started_ms: int | None  # its claim (epoch ms), if known
    holder_started_ms: int | None  # the lock holder's claim (epoch ms), if known
    counts: dict[str, int]  # the project's counters (the hash's fields)


@dataclass(frozen=True)
class Snapshot:
    """Everything a scrape shows, read at ``now`` (epoch seconds)."""

    now: float
    projects: list[ProjectState]
    server: dict[str, int]  # deployster:metrics
    notify: dict[str, int]  # deployster:metrics:notify
    runners_alive: int
    nodes_up: dict[str, bool] = field(default_factory=dict)  # node name -> up


def _counts(flat: Sequence[Any] | None) -> dict[str, int]:
    """A flat HGETALL reply of counters; a value that is no integer is skipped."""
    out: dict[str, int] = {}
    items = list(flat or ())
    for name, value in zip(items[::2], items[1::2], strict=True):
        try:
            out[str(name)] = int(value)
        except (TypeError, ValueError):
            continue
    return out


def _ms(value: Any) -> int | None:
    try:
        return int(value) if value else None
    except (TypeError, ValueError):
        return None


async def read(core: Deployster) -> Snapshot:
    """The state a scrape shows: the projects from the registry, the rest in
    one Redis round trip (``metrics_read.lua``). Raises what Redis or the
    database raise when down (the server answers 503)."""
    projects = await core.projects.all()
    now = time.time()
    since = int(now * 1000) - recovery.FORGET_AFTER_MS
    chunks = [projects[i:i + CHUNK] for i in range(0, len(projects), CHUNK)] or [[]]
    # No await between the calls: they leave as one pipeline.
    calls = [core.scripts.metrics_read([p.id for p in chunk], since_ms=since,
                                       server_wide=n == 0)
             for n, chunk in enumerate(chunks)]
    replies = [json.loads(reply) for reply in await asyncio.gather(*calls)]
    server, deliveries, runners, nodes = replies[0][:4]
    states = []
    for chunk, reply in zip(chunks, replies, strict=True):
        for project, row in zip(chunk, reply[4:], strict=True):
            holder, ttl, length, head, status, started, holder_started, counts = row
            states.append(ProjectState(
                project=project, lock_holder=holder or None, lock_ttl_ms=int(ttl),
                queue_length=int(length), oldest_queued_ms=created_ms(head) if head else None,
                running=status == JobStatus.RUNNING.value, running_started_ms=_ms(started),
                holder_started_ms=_ms(holder_started), counts=_counts(counts),
            ))
    alive = sum(1 for raw in (runners or [])[1::2]
                if raw is not None and recovery.announced_alive(raw))
    flat = list(nodes or ())
    announced = (fleet.Node.parse(str(n), str(raw)) for n, raw in zip(flat[::2], flat[1::2],
                                                                       strict=True))
    now_ms = int(now * 1000)
    up = {node.name: node.up(now_ms) for node in announced if node is not None}
    return Snapshot(now, states, _counts(server), _counts(deliveries), alive, up)


# ----------------------------------------------------------------- rendering


def _buckets(per_bucket: Sequence[int], bounds: Sequence[float]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs from counts per bucket (the last: +Inf)."""
    out, total = [], 0
    for bound, n in zip([*bounds, float("inf")], per_bucket, strict=True):
        total += n
        out.append((floatToGoString(bound), float(total)))
    return out


def _bucket_index(bound: str, bounds: Sequence[int]) -> int:
    """The bucket a stored bound falls in: the first of ``bounds`` at or above it
    (a bound kept by an older bucket list still counts below the right le)."""
    if bound == "inf":
        return len(bounds)
    try:
        return bisect_left(bounds, int(bound))
    except ValueError:
        return len(bounds)


@dataclass
class _ProjectCounts:
    ends: Counter[tuple[str, str]]
    durations: list[int]  # per bucket, +Inf last
    duration_ms: int
    ran: int  # jobs ended after running
    log_bytes: int


def _project_counts(counts: dict[str, int]) -> _ProjectCounts:
    parsed = _ProjectCounts(Counter(), [0] * (len(_DURATION_MS) + 1), 0, 0, 0)
    for name, n in counts.items():
        kind, _, rest = name.partition(":")
        if kind == "ended":
            status, reason, bucket = [*rest.split(":"), "", "", ""][:3]
            parsed.ends[(status, reason)] += n
            if bucket != "-":
                parsed.durations[_bucket_index(bucket, _DURATION_MS)] += n
                parsed.ran += n
        elif kind == "duration_ms":
            parsed.duration_ms += n
        elif name == "log_bytes":
            parsed.log_bytes += n
    return parsed


class StateCollector:
    """A prometheus_client collector over one ``Snapshot`` (a registry calls
    ``collect``); every family's name and meaning: README.md#metrics."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self._projects()
        yield from self._server()

    def _projects(self) -> Iterator[Metric]:
        now = self.snapshot.now
        # A project is (node, name): two nodes may each have a project of one name.
        p = ["node", "project"]
        started = CounterMetricFamily(
            "deployster_deploys_started", "Deploys that started running, by project.", labels=p)
        finished = CounterMetricFamily(
            "deployster_deploys_finished",
            "Deploys that ended, by project, status and failure reason ('' when complete); "
            "queued ones that were cancelled or superseded too.",
            labels=[*p, "status", "reason"])
        duration = HistogramMetricFamily(
            "deployster_deploy_duration_seconds",
            "How long deploys ran, from the lock's claim to their end, by project.", labels=p)
        log_bytes = CounterMetricFamily(
            "deployster_log_bytes", "Bytes written to deploys' logs, by project.", labels=p)
        gauges = {name: GaugeMetricFamily(name, doc, labels=p) for name, doc in (
            ("deployster_queue_length", "Deploys waiting in the project's queue."),
            ("deployster_queue_oldest_age_seconds",
             "Seconds since the oldest queued deploy was requested (0: none queued)."),
            ("deployster_lock_held", "1 while the project's deploy lock is held."),
            ("deployster_lock_ttl_seconds",
             "Seconds left on the lock's TTL (0: free; -1: held without expiry)."),
            ("deployster_lock_held_seconds",
             "Seconds since the lock's holder claimed it (0: free)."),
            ("deployster_deploy_running", "1 while a deploy of the project runs."),
            ("deployster_project_lock_ttl_seconds",
             "The project's lock TTL setting (the watchdog renews it every third)."),
            ("deployster_project_timeout_seconds", "The project's job timeout setting."),
        )}
        for state in self.snapshot.projects:
            project = [state.project.node, state.project.name]
            counts = _project_counts(state.counts)
            running_counted = state.running and state.running_started_ms is not None
            started.add_metric(project, counts.ran + running_counted)
            for status, reason in sorted(set(ENDS) | set(counts.ends)):
                finished.add_metric([*project, status, reason], counts.ends[(status, reason)])
            duration.add_metric(project, _buckets(counts.durations, DURATION_BUCKETS),
                                counts.duration_ms / 1000)
            log_bytes.add_metric(project, counts.log_bytes)
            held = state.lock_holder is not None
            oldest = state.oldest_queued_ms
            values = {
                "deployster_queue_length": state.queue_length,
                "deployster_queue_oldest_age_seconds":
                    max(0.0, now - oldest / 1000) if oldest is not None else 0.0,
                "deployster_lock_held": int(held),
                "deployster_lock_ttl_seconds":
                    (state.lock_ttl_ms / 1000 if state.lock_ttl_ms >= 0 else -1) if held else 0,
                "deployster_lock_held_seconds":
                    max(0.0, now - state.holder_started_ms / 1000)
                    if held and state.holder_started_ms is not None else 0.0,
                "deployster_deploy_running": int(state.running),
                "deployster_project_lock_ttl_seconds": state.project.lock_ttl,
                "deployster_project_timeout_seconds": state.project.timeout,
            }
            for metric, value in values.items():
                gauges[metric].add_metric(project, value)
        yield from (started, finished, duration, log_bytes, *gauges.values())

    def _server(self) -> Iterator[Metric]:
        server = self.snapshot.server
        per_bucket = [0] * (len(_HANDOFF_US) + 1)
        for name, n in server.items():
            kind, _, bound = name.partition(":")
            if kind == "handoff":
                per_bucket[_bucket_index(bound, _HANDOFF_US)] += n
        handoff = HistogramMetricFamily(
            "deployster_handoff_seconds",
            "From a deploy's claim of the lock (freed by the deploy before it, or free when "
            "it was requested) to its first process started.")
        handoff.add_metric([], _buckets(per_bucket, HANDOFF_BUCKETS),
                           server.get("handoff_sum_us", 0) / 1_000_000)
        yield handoff
        runners = GaugeMetricFamily(
            "deployster_runners_up",
            "Deploy servers (runners) alive now, on any host; 0: queued deploys wait.")
        runners.add_metric([], self.snapshot.runners_alive)
        yield runners
        nodes = GaugeMetricFamily(
            "deployster_node_up",
            "1 while the node (a host's server) announces itself; 0 once its heartbeat is "
            "older than fleet.NODE_STALE_S (listed until it is back or forgotten).",
            labels=["node"])
        for name, up in sorted(self.snapshot.nodes_up.items()):
            nodes.add_metric([name], int(up))
        yield nodes
        notify = self.snapshot.notify
        kinds = sorted(set(NOTIFY_KINDS) | {f.partition(":")[0] for f in notify})
        for outcome, doc in (("delivered", "Notifications delivered, by target kind."),
                             ("failed", "Notification attempts that failed, by target kind "
                                        "(a retried notification counts each time).")):
            family = CounterMetricFamily(f"deployster_notifications_{outcome}", doc,
                                         labels=["kind"])
            for kind in kinds:
                family.add_metric([kind], notify.get(f"{kind}:{outcome}", 0))
            yield family


def render(snapshot: Snapshot) -> bytes:
    """``snapshot`` in the Prometheus text format (``CONTENT_TYPE``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(snapshot))
    return generate_latest(registry)


async def exposition(core: Deployster) -> bytes:
    """What ``GET /metrics`` answers: ``read``, then ``render`` in a thread:
    at hundreds of projects rendering takes tens of milliseconds, which the
    event loop (its hand-offs, its requests) must not wait out in one piece."""
    return await asyncio.to_thread(render, await read(core))
