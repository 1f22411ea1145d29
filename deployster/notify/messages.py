"""What a notification says: the facts of one job event, and the body each
kind of target gets (README.md#notifications shows them).

- ``webhook``: the facts as one JSON object, signed with HMAC-SHA256 over the
  exact body bytes in ``X-Deployster-Signature: sha256=<hex>`` (GitHub's
  scheme for its own webhooks) when the target has a secret;
- ``slack``: ``{"text": …}`` for an incoming webhook: one readable line, and
  on a failure the log's tail in a code block;
- ``discord``: ``{"content": …}`` the same way, within Discord's 2,000
  characters, mentions off (a log line saying ``@everyone`` pings nobody).

The log tail is the end of the job's log as stored (already masked when it was
written, docs/runner.md#secrets), masked again with the project's secrets of
now, so a value added to a stage since is hidden too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..clock import iso, parse_iso
from ..models import Job

# The end of the log a message carries: at most this many lines and characters.
TAIL_LINES = 20
TAIL_CHARS = 2000
DISCORD_LIMIT = 2000
SIGNATURE_HEADER = "X-Deployster-Signature"

_ICONS = {"queued": "⏳", "started": "🚀", "complete": "✅", "failed": "❌",
          "superseded": "⏭️", "cancelled": "🚫", "lock_released": "🔓"}
# The events whose Slack and Discord messages carry the log's tail.
_WITH_TAIL = ("failed",)


@dataclass(frozen=True)
class Facts:
    """One job event as every target is told of it."""

    event: str
    job: Job
    project: str
    at_ms: int  # when it happened (epoch ms)
    actor: str | None = None  # who released the lock (lock_released)
    log_tail: str = ""
    log_url: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from the job's start to its end (None before either)."""
        started, ended = parse_iso(self.job.started_at), parse_iso(self.job.finished_at)
        if started is None or ended is None:
            return None
        return round((ended - started).total_seconds(), 3)


def tail(text: str, *, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The last ``lines`` lines of ``text``, at most ``chars`` characters."""
    kept = text.rstrip("\n").split("\n")[-lines:]
    return "\n".join(kept)[-chars:]


def webhook_body(facts: Facts) -> dict[str, Any]:
    job = facts.job
    return {
        "event": facts.event,
        "job_id": job.id,
        "project": facts.project,
        "project_id": job.project_id,
        "node": job.node,
        "commit": job.commit_hash or None,
        "ref": job.ref_name or None,
        "stage": job.stage,
        "status": job.status.value,
        "reason": job.reason,
        "exit_code": job.exit_code,
        "duration": facts.duration,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "started_by": job.started_by,
        "superseded_by": job.superseded_by,
        "released_by": facts.actor,
        "at": iso_ms(facts.at_ms),
        "log_tail": facts.log_tail,
        "log_url": facts.log_url,
    }


def iso_ms(ms: int) -> str:
    return iso(datetime.fromtimestamp(ms / 1000, UTC))


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def summary_line(facts: Facts) -> str:
    """One readable line: what happened to which deploy of which project."""
    job = facts.job
    what = job.ref_name or "no ref"
    if job.commit_hash:
        what += f" @ {job.commit_hash[:12]}"
    head = f"{_ICONS.get(facts.event, '')} {facts.project}: deploy {job.id} ({what})"
    took = facts.duration
    if facts.event == "lock_released":
        return f"{_ICONS['lock_released']} {facts.project}: the deploy lock held by job " \
               f"{job.id} was released by {facts.actor or 'an operator'}"
    if facts.event == "queued":
        return f"{head} queued, started by {job.started_by}"
    if facts.event == "started":
        return f"{head} started, started by {job.started_by}"
    if facts.event == "complete":
        return f"{head} complete" + (f" in {_span(took)}" if took is not None else "")
    if facts.event == "superseded":
        by = f" by {job.superseded_by}" if job.superseded_by else ""
        return f"{head} superseded{by} before it started"
    if facts.event == "cancelled":
        return f"{head} cancelled" + (" while running" if job.started_at else " while queued")
    exit_code = f", exit {job.exit_code}" if job.exit_code is not None else ""
    after = f" after {_span(took)}" if took is not None else ""
    return f"{head} failed: {job.reason or 'failed'}{exit_code}{after}"


def _fenced(text: str) -> str:
    # A ``` in the log would end the code block early.
    return "```\n" + text.replace("```", "'''") + "\n```"


def _slack_escape(text: str) -> str:
    # Slack's three control characters: no log line can make a link or a mention.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(facts: Facts) -> dict[str, Any]:
    text = _slack_escape(summary_line(facts))
    if facts.log_url:
        text += f" <{facts.log_url}|log>"
    if facts.event in _WITH_TAIL and facts.log_tail:
        text += "\n" + _fenced(_slack_escape(facts.log_tail))
    return {"text": text}


def discord_body(facts: Facts) -> dict[str, Any]:
    text = summary_line(facts)
    if facts.log_url:
        text += f" (log: <{facts.log_url}>)"
    if facts.event in _WITH_TAIL and facts.log_tail:
        room = DISCORD_LIMIT - len(text) - len("\n```\n\n```")
        if room > 100:
            text += "\n" + _fenced(facts.log_tail[-room:])
    return {"content": text[:DISCORD_LIMIT], "allowed_mentions": {"parse": []}}


BODIES = {"webhook": webhook_body, "slack": slack_body, "discord": discord_body}


def body_bytes(kind: str, facts: Facts) -> str:
    """The body a target of ``kind`` is sent, as the text stored with its
    delivery (the exact bytes signed and sent on every attempt)."""
    return json.dumps(BODIES[kind](facts), ensure_ascii=False, separators=(",", ":"))


def signature(secret: str, body: bytes) -> str:
    """The ``X-Deployster-Signature`` value: ``sha256=`` + HMAC-SHA256 hex of the body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
