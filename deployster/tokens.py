"""Per-project tokens: create, rotate, revoke, and resolve a sent token
(README.md#projects; what a token may do: docs/api.md#what-a-project-token-may-see).

A project token is ``dps_`` + 40 base62 characters from ``secrets`` (about 238
bits). It is shown once; the database keeps only its SHA-256 (hex). A fast,
unsalted hash is enough here: the input is uniformly random and far too long to
guess, so there is nothing for a slow password hash to protect.

Resolving a sent token never leaks its secret part through timing:

- the admin token (``DEPLOYSTER_TOKEN``) is compared with ``hmac.compare_digest``
  on SHA-256 digests (equal lengths, so not even its length leaks);
- a project token is looked up by its SHA-256. The lookup's timing depends
  only on that digest, which tells nothing about the token that would match
  (finding one is a preimage search); the stored digest found is then
  compared with ``hmac.compare_digest`` all the same.

Rotation and revocation overwrite the stored hash and bump the projects
version key in Redis; every resolve checks that key, so the old token stops
working in every server process as soon as the command returns.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import string

from .access import ADMIN, TOKEN_BODY_LEN, TOKEN_PATTERN, TOKEN_PREFIX, Principal
from .models import Project
from .projects import ProjectRegistry

ALPHABET = string.ascii_letters + string.digits  # base62, as TOKEN_PATTERN expects


def generate() -> str:
    """A new project token (``dps_`` + 40 random base62 characters)."""
    return TOKEN_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(TOKEN_BODY_LEN))


def hash_token(token: str) -> str:
    """What the database stores: the token's SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_project_token(sent: str) -> bool:
    """Whether ``sent`` has the shape of a project token (nothing more)."""
    return TOKEN_PATTERN.fullmatch(sent) is not None


async def rotate(registry: ProjectRegistry, project: Project) -> str:
    """Give ``project`` a new token (its previous one stops working); returns it.

    The caller shows the return value once: nothing can recover it later.
    """
    token = generate()
    await registry.set_token_hash(project, hash_token(token))
    return token


async def revoke(registry: ProjectRegistry, project: Project) -> bool:
    """Remove ``project``'s token; False when it had none."""
    had = project.token_hash is not None
    await registry.set_token_hash(project, None)
    return had


def is_admin_token(sent: str, admin_token: str | None) -> bool:
    """Whether ``sent`` is the admin token: ``is_secret``."""
    return is_secret(sent, admin_token)


def is_secret(sent: str, secret: str | None) -> bool:
    """Whether ``sent`` is ``secret`` (never, when there is none), in constant
    time in the secret, its length included: ``compare_digest`` on the raw
    strings returns at once when the lengths differ, which tells a prober the
    secret's length; the SHA-256 digests always have 32 bytes."""
    if not secret:
        return False
    return hmac.compare_digest(
        hashlib.sha256(sent.encode("utf-8", "surrogatepass")).digest(), _digest(secret)
    )


@functools.lru_cache(maxsize=4)
def _digest(secret: str) -> bytes:
    """A secret's SHA-256, made once (the admin and metrics tokens change
    only with a restart or a rotation)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


async def resolve(
    sent: str | None, *, admin_token: str | None, registry: ProjectRegistry,
    check: bool = True,
) -> Principal | None:
    """Who ``sent`` (the request's token header) authenticates as; None: nobody.

    ``check`` False: a project token found in the process's cache is taken
    without checking the projects version (a Redis round trip); the principal
    says which version it trusted (``Principal.trusted``) and the caller must
    check it before acting (``jobs.read_status`` does, in its own round trip)."""
    if sent is None:
        return None
    if is_admin_token(sent, admin_token):
        return ADMIN
    if not is_project_token(sent):
        return None
    digest = hash_token(sent)
    trusted = None
    if check:
        project = await registry.by_token_hash(digest)
    else:
        project, trusted = await registry.by_token_hash_unchecked(digest)
    if project is None or project.token_hash is None:
        return None
    if not hmac.compare_digest(digest, project.token_hash):
        return None
    return Principal(project_id=project.id, project=project.name, trusted=trusted)
