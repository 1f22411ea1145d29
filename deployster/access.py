"""Who is calling: the admin token or one project's token
(docs/api.md#what-a-project-token-may-see).

The admin token (``DEPLOYSTER_TOKEN``) may do anything. A project token may act
only on its own project; everything of another project answers 404, as if it
did not exist. Project tokens look like ``dps_<40 base62 chars>`` so that they
can be recognised (and masked) in output even though only their hash is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN_PREFIX = "dps_"
TOKEN_BODY_LEN = 40
# The token alphabet is URL- and shell-safe: quoting or URL-encoding a token
# leaves it unchanged, so one pattern finds it in those forms too.
TOKEN_PATTERN = re.compile(rf"{TOKEN_PREFIX}[A-Za-z0-9]{{{TOKEN_BODY_LEN}}}")


@dataclass(frozen=True)
class Principal:
    """The caller a request was authenticated as."""

    project_id: int | None = None  # None: the admin token
    project: str | None = None
    # A project token looked up in the per-process cache without checking
    # that no project changed since: the projects version the cache was read
    # at. Only a read that checks it in its own round trip takes such a
    # principal (GET /status: status_read.lua); None: checked.
    trusted: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.project_id is None

    @property
    def label(self) -> str:
        """What history records as ``started_by``."""
        return "admin" if self.is_admin else f"token:{self.project}"

    def can_see(self, project_id: int) -> bool:
        return self.is_admin or self.project_id == project_id


ADMIN = Principal()
