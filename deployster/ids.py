"""Job ids: ULIDs, unique under any concurrency and sortable by time.

Within one process ids are strictly increasing even inside one millisecond (the
random part is incremented), so acceptance order equals id order; across
processes the 80 random bits keep them unique.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


# Every two-character string, by the ten bits it encodes: half the steps of
# one character at a time (ids are made on every deploy request).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def _encode(value: int, length: int) -> str:
    """The low ``5 * length`` bits of ``value``, ``length`` characters of
    Crockford base32, most significant first; ``length`` even."""
    out = []
    for _ in range(length // 2):
        out.append(_PAIRS[value & 1023])
        value >>= 10
    return "".join(reversed(out))


def new_job_id() -> str:
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand += 1
        else:
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
        _last_ms = ms
        return _encode(ms, 10) + _encode(_last_rand, 16)


def first_id_at(seconds: float) -> str:
    """The smallest job id a job created at ``seconds`` (epoch) can have: every
    id below it belongs to an earlier millisecond."""
    return _encode(max(0, int(seconds * 1000)), 10) + "0" * 16


def created_ms(job_id: str) -> int | None:
    """When a job id was made (epoch ms: its first ten characters), None for
    anything that is no job id."""
    if not is_job_id(job_id):
        return None
    value = 0
    for char in job_id[:10]:
        value = value * 32 + _ALPHABET.index(char)
    return value


def is_job_id(value: str) -> bool:
    return len(value) == 26 and all(c in _ALPHABET for c in value)
