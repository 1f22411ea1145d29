"""Pinning a project's work tree to the commit CI built (``source: git``).

The original vps-deployster ran ``git stash``, ``git fetch`` and ``git checkout
<ref_name>`` before a deploy's commands, which is why the seed guide's example
holds no git command (``yarn install``, ``yarn build``, ``supervisorctl restart``).
Deployster does the same, exactly: it checks out the request's ``commit_hash``
(not whatever the branch's tip is by the time the job runs), never drops a local
change (a named stash), and verifies ``HEAD`` afterwards. Every git command runs
as a step of the job (its own header line and output in the log, cancellable).

A ``commit_hash`` that is no git revision at all (the seed guide's local curl
example sends the literal text ``$(git rev-parse HEAD)`` from a quoted heredoc)
deploys the remote tip of ``ref_name`` with a warning, as the seed did; one
that looks like a commit but cannot be found fails the job ``checkout_failed``
before any command runs.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Protocol

from .masking import LogSink
from .models import DeploySteps, Job

# What a commit id given by CI looks like (abbreviated or full, SHA-1 or SHA-256).
_HEX = re.compile(r"[0-9a-fA-F]{4,64}\Z")


class Steps(Protocol):
    """What pinning needs from the runner: logged steps and quiet reads."""

    log: LogSink

    async def step(self, command: str) -> tuple[int, str]:
        """Run ``command`` as a logged step; (exit status, its last output)."""
        ...

    async def capture(self, *argv: str) -> tuple[int, str]:
        """Run ``argv`` quietly in the project directory; (exit status, stdout)."""
        ...


class CheckoutFailed(Exception):
    """The work tree could not be pinned; the message is for the job's log."""


async def uses_git(runner: Steps, cd: str, steps: DeploySteps) -> bool:
    """Whether a job pins its code: ``source`` says so, or (``auto``) ``cd`` is
    the top of a git work tree."""
    if steps.source != "auto":
        return steps.source == "git"
    # The top of a work tree holds ``.git`` (a directory, or a file in a linked
    # worktree or submodule): without one there is nothing to ask git, and a
    # deploy of a plain directory spawns no process before its first command.
    if not os.path.lexists(os.path.join(cd, ".git")):
        return False
    code, top = await runner.capture("git", "rev-parse", "--show-toplevel")
    return code == 0 and os.path.realpath(top.strip()) == os.path.realpath(cd)


async def _revision(runner: Steps, rev: str) -> str | None:
    code, out = await runner.capture("git", "rev-parse", "--verify", "--quiet",
                                     "--end-of-options", f"{rev}^{{commit}}")
    return out.strip() if code == 0 and out.strip() else None


async def _is_branch_name(runner: Steps, ref: str) -> bool:
    code, _ = await runner.capture("git", "check-ref-format", "--branch", ref)
    return code == 0 and not ref.startswith("-")


async def pin(runner: Steps, job: Job, steps: DeploySteps) -> str:
    """Fetch, stash local changes, check out ``job.commit_hash`` on branch
    ``job.ref_name``, verify ``HEAD``; returns the full commit checked out.
    Raises ``CheckoutFailed`` (the job then fails ``checkout_failed``)."""
    log, remote, ref = runner.log, steps.git_remote, job.ref_name
    q = shlex.quote
    code, _ = await runner.step(f"git fetch {q(remote)}")
    if code != 0:
        raise CheckoutFailed(f"git fetch from {remote!r} failed (exit {code})")

    code, dirty = await runner.capture("git", "status", "--porcelain", "--untracked-files=no")
    if code != 0:
        raise CheckoutFailed("the project directory is no usable git work tree "
                             "(git status failed)")
    if dirty.strip():
        message = f"deployster {job.id}"
        code, _ = await runner.step(f"git stash push -m {q(message)}")
        if code != 0:
            raise CheckoutFailed("git could not save the local changes (git stash failed)")
        log.note(f"[deployster] local changes to tracked files were saved as the stash "
                  f"{message!r} (see 'git stash list'; 'git stash apply' brings them back); "
                  "untracked files are left as they are\n")

    branch = await _is_branch_name(runner, ref)
    wanted = job.commit_hash.strip()
    if _HEX.match(wanted):
        sha = await _revision(runner, wanted)
        if sha is None:  # not in any fetched branch: ask the remote for it by id
            await runner.step(f"git fetch {q(remote)} {q(wanted)}")
            sha = await _revision(runner, wanted)
        if sha is None:
            raise CheckoutFailed(f"commit {wanted} is not in {remote!r}, even after a fetch")
    else:
        tip = f"refs/remotes/{remote}/{ref}"
        sha = await _revision(runner, tip) if branch else None
        if sha is None:
            raise CheckoutFailed(
                f"commit_hash {wanted!r} is no git revision, and {remote!r} has no branch "
                f"{ref!r} to deploy the tip of instead")
        log.note(f"[deployster] warning: commit_hash {wanted!r} is no git revision; "
                  f"deploying the tip of {remote}/{ref} instead, {sha[:12]}\n")

    if branch:
        before = await _revision(runner, f"refs/heads/{ref}")
        code, _ = await runner.step(f"git checkout -B {q(ref)} {sha}")
        if code != 0:
            raise CheckoutFailed(f"git refused to check out {sha[:12]} on branch {ref!r}")
        moved = ("created at" if before is None else "unchanged at" if before == sha
                 else f"moved from {before[:12]} to")
        log.note(f"[deployster] branch {ref} {moved} {sha[:12]}\n")
    else:
        code, _ = await runner.step(f"git checkout --detach {sha}")
        if code != 0:
            raise CheckoutFailed(f"git refused to check out {sha[:12]}")
        log.note(f"[deployster] {ref!r} is no branch name: {sha[:12]} checked out detached\n")

    head = await _revision(runner, "HEAD")
    if head != sha:
        raise CheckoutFailed(f"HEAD is {head or 'unknown'} after the checkout, not {sha}")
    log.note(f"[deployster] deploying commit {sha}\n")
    return sha
