"""Time helpers: everything stored is UTC, ISO-8601 with milliseconds and a Z."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def now_ms() -> int:
    """Epoch milliseconds (a log entry's ``t``)."""
    return int(time.time() * 1000)


def iso(dt: datetime | None = None) -> str:
    """``dt`` (default: now) as ``2024-05-01T12:00:00.123Z``."""
    if dt is None:
        return _iso_now()
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# (epoch second, its text up to the milliseconds): strftime cost more than the
# rest of a timestamp, and a deploy request takes two; the text changes once a
# second. One tuple, swapped whole, so a thread never pairs a second with
# another second's text.
_second_text: tuple[int, str] = (-1, "")


def _iso_now() -> str:
    global _second_text
    second, ns = divmod(time.time_ns(), 1_000_000_000)
    cached, text = _second_text
    if second != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _second_text = (second, text)
    return f"{text}{ns // 1_000_000:03d}Z"


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
