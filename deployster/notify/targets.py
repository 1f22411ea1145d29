"""Notification targets and GitHub links, checked where they are entered
(``deployster project add|edit``, the settings file), so that a delivery never
meets one it cannot send: a kind it does not know, a URL no client can post to,
an event no job has.

``NotifyChange`` is what one ``project add|edit`` asks for; ``apply`` gives the
project's new targets, repository and token from its current ones, or raises
``InvalidRequest`` (``invalid_value``) naming the first problem, nothing changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import InvalidRequest
from ..models import DEFAULT_NOTIFY_EVENTS, NOTIFY_EVENTS, NOTIFY_KINDS, NotifyTarget, Project
from ..printable import find_control

# The events a GitHub deployment follows (an operator's lock release is none of them).
GITHUB_EVENTS = frozenset(NOTIFY_EVENTS) - {"lock_released"}
# GitHub's own rules: an owner is 1-39 letters, digits and '-'; a repository
# name letters, digits, '.', '_' and '-'.
_REPO = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}\Z")


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_value")


def parse_events(text: str) -> tuple[str, ...]:
    """``complete,failed`` (or ``all``) as event names, in ``NOTIFY_EVENTS``
    order; raises ``InvalidRequest`` for an unknown or missing one."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return NOTIFY_EVENTS
    unknown = [name for name in names if name not in NOTIFY_EVENTS]
    if unknown or not names:
        shown = ", ".join(repr(n) for n in unknown) if unknown else "none"
        raise _invalid(f"notification events must be a comma-separated list of "
                       f"{', '.join(NOTIFY_EVENTS)} (or all); got {shown}")
    return tuple(event for event in NOTIFY_EVENTS if event in names)


def check_url(url: str, what: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host; raises
    ``InvalidRequest`` saying so, without repeating it (it may be a credential)."""
    if any(ch.isspace() for ch in url) or find_control(url) is not None:
        raise _invalid(f"{what} must be a URL without spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 -- a port that is no number raises here
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host:
        raise _invalid(f"{what} must be an http:// or https:// URL with a host")
    return url


def parse_target(spec: str, events: tuple[str, ...] = DEFAULT_NOTIFY_EVENTS,
                 secret: str | None = None) -> NotifyTarget:
    """``KIND=URL`` (``webhook=https://…``) as a target wanting ``events``;
    ``secret`` signs a webhook's bodies (the other kinds take none)."""
    kind, sep, url = spec.partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in NOTIFY_KINDS:
        raise _invalid(f"a notification target is KIND=URL with KIND one of "
                       f"{', '.join(NOTIFY_KINDS)}; got {kind or spec[:20]!r}")
    check_url(url.strip(), f"the {kind} target's URL")
    return NotifyTarget(kind, url.strip(), events, secret if kind == "webhook" else None)


def parse_repo(text: str) -> str:
    """``owner/repo``, checked by GitHub's naming rules."""
    repo = text.strip()
    if repo.lower().startswith("https://github.com/"):
        repo = repo[len("https://github.com/"):].removesuffix(".git").strip("/")
    if not _REPO.match(repo):
        raise _invalid(f"a GitHub repository is OWNER/REPO (letters, digits, '-', and "
                       f"'.', '_' in the name); got {text!r}")
    return repo


def check_secret(text: str, what: str) -> str:
    """A secret as read from its file: surrounding whitespace (the file's
    newline) dropped; empty, or holding a line break, is refused."""
    secret = text.strip()
    if not secret:
        raise _invalid(f"{what} is empty")
    if "\n" in secret or "\r" in secret:
        raise _invalid(f"{what} holds more than one line")
    return secret


def github_target_id(repo: str) -> str:
    """Names a project's GitHub link as ``NotifyTarget.id`` names a target."""
    return "github-" + NotifyTarget("github", repo).id


def default_targets(specs: tuple[str, ...], events: str,
                    secret: str | None) -> tuple[NotifyTarget, ...]:
    """The server-wide targets (``DEPLOYSTER_NOTIFY``, ``…_NOTIFY_ON``,
    ``…_NOTIFY_SECRET``)."""
    wanted = parse_events(events)
    return tuple(parse_target(spec, wanted, secret) for spec in specs)


def effective_targets(project: Project,
                      defaults: tuple[NotifyTarget, ...]) -> tuple[NotifyTarget, ...]:
    """The targets a project's events go to: its own, else the server-wide ones."""
    return defaults if project.notify is None else project.notify


@dataclass(frozen=True)
class NotifyChange:
    """What one ``project add|edit`` asks of the notifications (None/False:
    leave as it is)."""

    targets: tuple[str, ...] | None = None  # KIND=URL each: the new list
    events: str | None = None  # comma-separated; with targets, theirs, else every target's
    secrets: tuple[str, ...] | None = None  # one for every webhook target, or one each
    off: bool = False  # no notifications at all, not even the server-wide ones
    defaults: bool = False  # no targets of its own: the server-wide ones apply
    github: str | None = None  # owner/repo
    no_github: bool = False
    github_token: str | None = None

    def __bool__(self) -> bool:
        return any(value not in (None, False) for value in vars(self).values())


def _with_secrets(targets: list[NotifyTarget], secrets: tuple[str, ...]) -> list[NotifyTarget]:
    hooks = [i for i, t in enumerate(targets) if t.kind == "webhook"]
    if not hooks:
        raise _invalid("a secret signs webhook bodies, and none of the targets is a webhook")
    if len(secrets) not in (1, len(hooks)):
        raise _invalid(f"give the secret once (for every webhook target) or once per webhook "
                       f"target ({len(hooks)}), in their order; got {len(secrets)}")
    out = list(targets)
    for n, i in enumerate(hooks):
        secret = check_secret(secrets[n if len(secrets) > 1 else 0], "the webhook secret")
        out[i] = NotifyTarget(targets[i].kind, targets[i].url, targets[i].events, secret)
    return out


def apply(project: Project | None, change: NotifyChange
          ) -> tuple[tuple[NotifyTarget, ...] | None, str | None, str | None]:
    """The notifications ``change`` makes of ``project``'s (None: a new
    project): (its targets, None for the server-wide ones; its GitHub
    repository; its GitHub token). Raises ``InvalidRequest``.

    A new target list keeps the secret of a webhook already in it (same URL)
    unless a secret is given; ``events`` without targets changes every
    target's events; a token needs a repository (given now or already set).
    """
    notify = project.notify if project else None
    repo = project.github_repo if project else None
    token = project.github_token if project else None
    if sum((change.targets is not None, change.off, change.defaults)) > 1:
        raise _invalid("give one of --notify, --no-notify and --notify-default")
    old = {t.id: t for t in notify or ()}
    if change.targets is not None:
        events = parse_events(change.events) if change.events is not None \
            else DEFAULT_NOTIFY_EVENTS
        targets: list[NotifyTarget] = []
        for spec in change.targets:
            target = parse_target(spec, events)
            if any(t.id == target.id for t in targets):
                raise _invalid(f"the {target.kind} target {target.shown_url()} is given twice")
            kept = old.get(target.id)
            if kept is not None and kept.secret is not None:
                target = NotifyTarget(target.kind, target.url, events, kept.secret)
            targets.append(target)
        if change.secrets is not None:
            targets = _with_secrets(targets, change.secrets)
        notify = tuple(targets)
    elif change.off:
        notify = ()
    elif change.defaults:
        notify = None
    elif change.events is not None or change.secrets is not None:
        if not notify:
            raise _invalid("the project has no notification targets of its own: add them "
                           "with --notify KIND=URL")
        current = list(notify)
        if change.events is not None:
            events = parse_events(change.events)
            current = [NotifyTarget(t.kind, t.url, events, t.secret) for t in current]
        if change.secrets is not None:
            current = _with_secrets(current, change.secrets)
        notify = tuple(current)
    if change.off and change.events is not None:
        raise _invalid("--notify-on needs targets: --no-notify leaves none")
    if change.no_github:
        if change.github is not None or change.github_token is not None:
            raise _invalid("--no-github removes the GitHub repository and token; give it alone")
        repo = token = None
    if change.github is not None:
        repo = parse_repo(change.github)
    if change.github_token is not None:
        if repo is None:
            raise _invalid("a GitHub token needs a repository: add --github OWNER/REPO")
        token = check_secret(change.github_token, "the GitHub token")
    return notify, repo, token
