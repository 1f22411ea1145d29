"""When will a queued job start? An estimate from the project's recent run times.

The model (``redis_scripts/wait.lua``, read in the same round trip as the rest
of a status): the typical run time is the median of the project's last ten
complete jobs; the running job has that minus how long it has run left (never
below 0); each job ahead in the queue takes the typical run time. A project
that has never completed a job has no estimate: saying nothing beats a guess.
Failed and cancelled jobs are not counted (a job that fails at once says little
about how long a deploy takes). The fields it fills: docs/api.md
(``estimated_start_in``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# How many recent run times the model keeps (wait.lua's DURATIONS_KEPT).
DURATIONS_KEPT = 10


@dataclass(frozen=True)
class StartEstimate:
    """What a project's queue waits for: ``typical_ms``, the median run time
    of its recent complete jobs (None: no history); ``remaining_ms``, what the
    running job has left of it (0: none running, or overdue)."""

    typical_ms: int | None = None
    remaining_ms: int = 0

    @classmethod
    def from_reply(cls, typical: Any, remaining: Any) -> StartEstimate:
        """From wait.lua's reply pair ({typical_ms or '', remaining_ms})."""
        if typical in (None, "", b""):
            return cls()
        return cls(int(typical), int(remaining or 0))

    def starts_in(self, position: int | None) -> float | None:
        """Seconds (one decimal) until the job at 1-based ``position`` in the
        queue starts: the running job's rest plus a typical run per job ahead;
        None without history or without a position."""
        if self.typical_ms is None or not position:
            return None
        return round((self.remaining_ms + (position - 1) * self.typical_ms) / 1000, 1)

    def aged(self, seconds: float) -> StartEstimate:
        """The same estimate ``seconds`` after it was read: the running job has
        that much less left (never below 0); the typical run time is unchanged."""
        return replace(self, remaining_ms=max(0, self.remaining_ms - int(seconds * 1000)))
