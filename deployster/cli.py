"""The ``deployster`` command line.

Every failure a user can cause (a typo, a missing token, a port in use, Redis
down) ends with one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import ipaddress
import json
import logging
import math
import os
import sys
import textwrap
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import __version__, admin_token, client, logformat, node
from .control import completed_jobs, deployed_commit, redeploy, rollback
from .errors import Conflict, DeploysterError
from .logreader import follow
from .models import SOURCES, JobStatus, Project
from .notify.targets import NotifyChange
from .outages import RedisRefused, classify, describe
from .printable import CONTINUATION, escape_controls
from .projects import QUEUE_POLICIES
from .service import Deployster
from .settings import CONFIG_VAR, FILE, Settings, env_name


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of days")
    return value


def _positive_count(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deployster",
        description="Queued, lock-safe deploys for your own VPS.",
    )
    parser.add_argument("--version", action="version", version=f"deployster {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve", help="run the deploy server (HTTP API + job runner)",
        description="Run the deploy server: the HTTP API and the job runner. Without "
                    "DEPLOYSTER_TOKEN the admin token is the one kept in the data dir, "
                    "made on the first start ('deployster token' prints it).",
        epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", help="address to listen on (DEPLOYSTER_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (DEPLOYSTER_PORT, 3259)")
    serve.set_defaults(handler=cmd_serve)

    config = sub.add_parser(
        "config", help="print every setting in effect and where it came from (secrets hidden)")
    config.set_defaults(handler=cmd_config)

    token = sub.add_parser(
        "token", help="print the admin token kept in the data dir (made if there is none), "
                      "or --rotate it")
    token.add_argument("--rotate", action="store_true",
                       help="replace it: the old token stops working at once")
    token.set_defaults(handler=cmd_token)

    tui = sub.add_parser("tui", help="the operator dashboard (same Redis and database as "
                                     "the server)")
    tui.add_argument("--serve", action="store_true",
                     help="also run the deploy server (HTTP API + job runner) in this process")
    tui.add_argument("--host", help="with --serve: address to listen on")
    tui.add_argument("--port", type=_port, help="with --serve: port to listen on")
    tui.set_defaults(handler=cmd_tui)

    project = sub.add_parser("project", help="register, list and edit projects")
    psub = project.add_subparsers(dest="project_command", metavar="ACTION", required=True)

    def stage_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pipeline", type=Path, metavar="FILE.json",
                       help="pipeline stages: a JSON list of {stage_name, git_branch, "
                            "environment_variables}")
        p.add_argument("--lock-ttl", type=client.seconds(positive=True), metavar="S",
                       help="lock TTL in seconds (renewed while a job runs; default 600)")
        p.add_argument("--timeout", type=client.seconds(positive=True), metavar="S",
                       help="a job running longer than this is stopped (default 3600)")
        p.add_argument("--source", choices=SOURCES,
                       help="git: check out the request's commit before the commands; none: "
                            "deploy the directory as it is; auto (default): git when the "
                            "directory is the top of a git work tree")
        p.add_argument("--git-remote", metavar="NAME",
                       help="the remote to fetch from (default origin)")
        p.add_argument("--supervisor-update", action=argparse.BooleanOptionalAction,
                       default=None,
                       help="run 'supervisorctl reread' and 'update <group>' before the final "
                            "restart (default: yes)")
        p.add_argument("--verify-window", type=client.seconds(positive=False), metavar="S",
                       help="after the restart, how long the program has to be seen RUNNING "
                            "(default 10; 0: do not check)")
        p.add_argument("--verify-running", type=client.seconds(positive=False), metavar="S",
                       help="how long it must have been RUNNING to count (default 3)")
        p.add_argument("--queue-policy", choices=QUEUE_POLICIES,
                       help="fifo (default): every request runs in order; supersede: a new "
                            "request replaces older queued ones for the same branch")

    def notify_options(p: argparse.ArgumentParser, *, editing: bool) -> None:
        which = p.add_mutually_exclusive_group()
        which.add_argument("--notify", action="append", metavar="KIND=URL",
                           help="send job events to this target (repeatable; KIND: webhook, "
                                "slack or discord); replaces the project's targets")
        which.add_argument("--no-notify", action="store_true",
                           help="no notifications for this project, not even the server-wide "
                                "ones (DEPLOYSTER_NOTIFY)")
        which.add_argument("--notify-default", action="store_true",
                           help="no targets of its own: the server-wide ones apply (the "
                                "default of a new project)")
        p.add_argument("--notify-on", metavar="EVENTS",
                       help="comma-separated: queued, started, complete, failed, superseded, "
                            "cancelled, lock_released, or all (default complete,failed)")
        p.add_argument("--notify-secret-file", action="append", type=Path, metavar="FILE",
                       help="the key that signs webhook bodies (HMAC-SHA256): once for every "
                            "webhook target, or once per webhook target in their order; "
                            "stored, never printed")
        github = p.add_mutually_exclusive_group()
        github.add_argument("--github", metavar="OWNER/REPO",
                            help="post each job as a GitHub deployment of this repository")
        if editing:
            github.add_argument("--no-github", action="store_true",
                                help="stop posting GitHub deployments (the token goes too)")
        p.add_argument("--github-token-file", type=Path, metavar="FILE",
                       help="a GitHub token for this project's deployments (default: "
                            "DEPLOYSTER_GITHUB_TOKEN); stored, never printed")

    add = psub.add_parser("add", help="register a project directory")
    add.add_argument("path", help="the project directory (the 'cd' CI sends)")
    add.add_argument("--name", help="a short name (default: the directory's name)")
    stage_options(add)
    notify_options(add, editing=False)
    add.set_defaults(handler=cmd_project_add)

    edit = psub.add_parser(
        "edit", help="change a project's name, stages, TTL, timeout, steps or notifications")
    edit.add_argument("project", metavar="NAME|ID|PATH")
    edit.add_argument("--node", help="with a PATH: the node it is on (default: this host's)")
    edit.add_argument("--name", help="a new name")
    stage_options(edit)
    notify_options(edit, editing=True)
    edit.set_defaults(handler=cmd_project_edit)

    lst = psub.add_parser("list", help="list registered projects")
    lst.add_argument("--json", action="store_true",
                     help="print JSON: the objects of the API's GET /projects")
    lst.add_argument("--node", help="only this node's projects (a fleet: 'deployster nodes')")
    lst.set_defaults(handler=cmd_project_list)

    show = psub.add_parser("show", help="show one project")
    show.add_argument("project", metavar="NAME|ID|PATH")
    show.add_argument("--node", help="with a PATH: the node it is on (default: this host's)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=cmd_project_show)

    remove = psub.add_parser(
        "remove", help="remove a project (refused while it has queued or running jobs, "
                       "unless --force); its history is kept unless --drop-history",
        description="Remove a project: its token stops working and deploys to its directory "
                    "are refused (or, under DEPLOYSTER_ALLOWED_ROOTS, register it anew). Its "
                    "deploys stay in the history ('deployster job list') unless "
                    "--drop-history. Recorded as an audit event.")
    remove.add_argument("project", metavar="NAME|ID|PATH")
    remove.add_argument("--node", help="with a PATH: the node it is on (default: this host's)")
    remove.add_argument("--force", action="store_true",
                        help="cancel its queued jobs and stop its running one (as 'job cancel' "
                             "does), wait for it to end, then remove it")
    remove.add_argument("--drop-history", action="store_true",
                        help="also delete its deploys and their logs from the history")
    remove.set_defaults(handler=cmd_project_remove)

    token = psub.add_parser(
        "token", help="create or rotate a project's API token (printed once), or --revoke it"
    )
    token.add_argument("project", metavar="NAME|ID|PATH")
    token.add_argument("--node", help="with a PATH: the node it is on (default: this host's)")
    token.add_argument("--revoke", action="store_true",
                       help="remove the project's token: it stops working at once")
    token.set_defaults(handler=cmd_project_token)

    nodes = sub.add_parser(
        "nodes", help="the nodes (hosts) sharing this Redis: up or down, heartbeat, URL",
        description="Each 'deployster serve' is a node (DEPLOYSTER_NODE); several hosts' "
                    "servers may share one Redis and one PostgreSQL (README: Several hosts).")
    nodes.add_argument("--json", action="store_true", help="print JSON")
    nodes.add_argument("--forget", metavar="NODE",
                       help="drop a node that is down for good (decommissioned) from the list; "
                            "refused while it is up or still has projects")
    nodes.set_defaults(handler=cmd_nodes)

    job = sub.add_parser("job", help="act on a deploy job")
    jsub = job.add_subparsers(dest="job_command", metavar="ACTION", required=True)
    cancel = jsub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=cmd_job_cancel)
    jlist = jsub.add_parser("list", help="recent deploys, newest first")
    jlist.add_argument("project", nargs="?", metavar="NAME|ID|PATH",
                       help="only this project's deploys")
    jlist.add_argument("--limit", type=_positive_count, default=20, metavar="N",
                       help="how many (default 20)")
    jlist.add_argument("--json", action="store_true")
    jlist.add_argument("--node", help="only deploys of this node's projects")
    jlist.set_defaults(handler=cmd_job_list)
    jshow = jsub.add_parser("show", help="one job: status, times, commands (secrets masked)")
    jshow.add_argument("job_id")
    jshow.add_argument("--json", action="store_true")
    jshow.set_defaults(handler=cmd_job_show)
    jlogs = jsub.add_parser("logs", help="print a job's log (from Redis or the history)")
    jlogs.add_argument("job_id")
    jlogs.add_argument("-f", "--follow", action="store_true",
                       help="keep printing as the job writes, until it ends")
    jlogs.set_defaults(handler=cmd_job_logs)
    jredeploy = jsub.add_parser(
        "redeploy", help="queue a job again: its commands, ref and the very commit it deployed")
    jredeploy.add_argument("job_id")
    jredeploy.set_defaults(handler=cmd_job_redeploy)

    notes = sub.add_parser(
        "notifications", help="recent notification and GitHub deployment attempts, newest "
                              "first (from the audit log), and how many wait")
    notes.add_argument("project", nargs="?", metavar="NAME|ID|PATH",
                       help="only this project's")
    notes.add_argument("--limit", type=_positive_count, default=20, metavar="N",
                       help="how many (default 20)")
    notes.add_argument("--json", action="store_true")
    notes.set_defaults(handler=cmd_notifications)

    unlock = sub.add_parser(
        "unlock", help="release a project's deploy lock (shows the holder, asks first)",
        description="Release a project's deploy lock, as the dashboard's 'u' does: only if "
                    "the holder shown still holds it (compare-and-set), recorded as an audit "
                    "event; the queue is woken so that a running server starts the next job. "
                    "A holder still running ends lock_lost.")
    unlock.add_argument("project", metavar="NAME|ID|PATH")
    unlock.add_argument("--node", help="with a PATH: the node it is on (default: this host's)")
    unlock.add_argument("-y", "--yes", action="store_true",
                        help="do not ask: release it if the holder shown still holds it")
    unlock.set_defaults(handler=cmd_unlock)

    back = sub.add_parser(
        "rollback", help="redeploy the newest complete deploy of another commit than the one "
                         "deployed now (or --to JOB's)")
    back.add_argument("project", metavar="NAME|ID|PATH")
    back.add_argument("--node", help="with a PATH: the node it is on (default: this host's)")
    back.add_argument("--to", metavar="JOB", help="the job whose commit to go back to")
    back.set_defaults(handler=cmd_rollback)

    hist = sub.add_parser("history", help="maintain the SQL history")
    hsub = hist.add_subparsers(dest="history_command", metavar="ACTION", required=True)
    prune = hsub.add_parser(
        "prune", help="delete old finished deploys (and their logs) from the history",
        description="Delete finished deploys requested more than DAYS days ago, keeping "
                    "each project's KEEP newest finished ones. Queued and running jobs "
                    "are never touched. With DEPLOYSTER_HISTORY_DAYS set, the server does "
                    "this every hour.")
    prune.add_argument("--days", type=_days, default=None,
                       help="age in days (default: DEPLOYSTER_HISTORY_DAYS)")
    prune.add_argument("--keep", type=_count, default=None, metavar="N",
                       help="finished deploys kept per project whatever their age "
                            "(default: DEPLOYSTER_HISTORY_KEEP, 20)")
    prune.add_argument("--dry-run", action="store_true",
                       help="only count what would be deleted")
    prune.set_defaults(handler=cmd_history_prune)

    deploy = sub.add_parser(
        "deploy", help="CI client: ask a deployster server to deploy, stream the log, "
                       "exit 0 complete / 1 failed / 2 error / 130, 143 detached",
        **client.parser_texts("deployster deploy"))
    client.one_line_errors(deploy)
    client.add_arguments(deploy)
    deploy.set_defaults(handler=cmd_deploy, parser=deploy)
    return parser


# ----------------------------------------------------------------- helpers


def _settings(**flags: Any) -> Settings:
    # A flag left out (None) leaves the environment's value.
    return Settings.from_env(**flags)


async def _with_core(settings: Settings, body: Callable[[Deployster], Awaitable[int]]) -> int:
    core = await Deployster.open(settings)
    try:
        return await body(core)
    finally:
        await core.close()


def _read_pipeline(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise DeploysterError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise DeploysterError(f"{path} is not valid JSON: {exc}") from None


def _steps_from(args: argparse.Namespace) -> dict[str, Any]:
    """The deploy step options given on the command line."""
    given = {"source": args.source, "git_remote": args.git_remote,
             "supervisor_update": args.supervisor_update,
             "verify_window": args.verify_window, "verify_running": args.verify_running}
    return {k: v for k, v in given.items() if v is not None}


def _read_secret(path: Path | None) -> str | None:
    """A secret file's text (``notify.targets.check_secret`` trims and checks it)."""
    if path is None:
        return None
    try:
        return path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise DeploysterError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DeploysterError(f"{path} is not text (UTF-8)") from None


def _notify_from(args: argparse.Namespace) -> NotifyChange:
    """The notification options given on the command line."""
    return NotifyChange(
        targets=tuple(args.notify) if args.notify else None,
        events=args.notify_on,
        secrets=tuple(_read_secret(p) or "" for p in args.notify_secret_file)
        if args.notify_secret_file else None,
        off=args.no_notify, defaults=args.notify_default,
        github=args.github, no_github=getattr(args, "no_github", False),
        github_token=_read_secret(args.github_token_file),
    )


def _warn_github_token(project: Any, settings: Settings) -> None:
    if project.github_repo and not project.github_token and not settings.github_token:
        print(f"deployster: note: project {project.name!r} has no GitHub token of its own and "
              "DEPLOYSTER_GITHUB_TOKEN is not set here: give the server one, or "
              "--github-token-file FILE", file=sys.stderr)


def _notify_lines(project: Any, defaults: Any) -> list[str]:
    """What ``project show`` says of the notifications: no URL's credential, no secret."""
    lines = []
    targets = project.notify
    if targets is None:
        targets = defaults
        if not defaults:
            lines.append("notify:    none (no targets of its own; DEPLOYSTER_NOTIFY sets none)")
    elif not targets:
        lines.append("notify:    off (--no-notify)")
    for target in targets:
        signed = "; signed" if target.secret else ""
        server = " (server-wide)" if project.notify is None else ""
        lines.append(f"notify:    {target.kind} {target.shown_url()} "
                     f"({', '.join(target.events)}{signed}){server}")
    if project.github_repo:
        token = ("its own" if project.github_token else "DEPLOYSTER_GITHUB_TOKEN's")
        lines.append(f"github:    {project.github_repo} (deployments; token: {token})")
    return lines


def _print_project(project: Any, *, as_json: bool, deployed: Any = None,
                   defaults: Any = ()) -> None:
    """``deployed``: the project's newest complete job (what is deployed now);
    ``defaults``: the server-wide notification targets."""
    if as_json:
        data = project.to_dict()
        data["deployed_commit"] = deployed_commit(deployed) if deployed else None
        data["deployed_job"] = deployed.id if deployed else None
        print(json.dumps(data, indent=2))
        return
    print(f"name:      {project.name}")
    print(f"id:        {project.id}")
    print(f"path:      {escape_controls(project.path)}")
    print(f"lock TTL:  {project.lock_ttl:g}s")
    print(f"timeout:   {project.timeout:g}s")
    print(f"queue:     {project.queue_policy}")
    if deployed is not None:
        print(f"deployed:  {deployed_commit(deployed)} (job {deployed.id}, "
              f"{deployed.finished_at or '?'})")
    else:
        print("deployed:  nothing yet")
    steps = project.steps
    print(f"source:    {steps.source}" + (f" (remote {steps.git_remote})"
                                          if steps.source != "none" else ""))
    print(f"restart:   {'reread + update its group, then ' if steps.supervisor_update else ''}"
          + (f"verified RUNNING for {steps.verify_running:g}s within {steps.verify_window:g}s"
             if steps.verify_window else "not verified"))
    if project.token_hash is not None:
        print(f"token:     set (created {project.token_created_at})")
    else:
        print("token:     none")
    for line in _notify_lines(project, defaults):
        print(line)
    if not project.pipeline:
        print("stages:    none")
    for stage in project.pipeline:
        keys = ", ".join(v.key for v in stage.environment_variables) or "no variables"
        # Entered text, shown escaped: rows stored before control characters
        # were refused at entry may still hold some (printable.py).
        print(f"stage:     {escape_controls(stage.stage_name)} "
              f"(branch {escape_controls(stage.git_branch)}): {keys}")


# ----------------------------------------------------------------- commands


# serve --help's settings: names in a column this wide, lines at most this long.
HELP_NAME_WIDTH = max(len(env_name(name)) for name in Settings.model_fields) + 2
HELP_WIDTH = 100


def settings_help() -> str:
    """Every setting, one line each (its docstring in ``Settings``): the
    epilog of ``serve --help``."""
    lines = ["settings: DEPLOYSTER_* variables, or the keys of the TOML file named by "
             f"{CONFIG_VAR}", "(in lower case, without the prefix); the environment wins. "
             "'deployster config' prints those in effect.", ""]
    for name, field in Settings.model_fields.items():
        lines += textwrap.wrap(field.description or "", width=HELP_WIDTH,
                               initial_indent=f"  {env_name(name):<{HELP_NAME_WIDTH}}",
                               subsequent_indent=" " * (HELP_NAME_WIDTH + 2))
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.serve import serve

    settings = _settings(host=args.host, port=args.port)
    logformat.use(settings.log_format)
    asyncio.run(serve(settings))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    settings, origins = Settings.load()
    if settings.token:
        where = (f"the config file {os.environ.get(CONFIG_VAR)}" if origins["token"] == FILE
                 else "DEPLOYSTER_TOKEN")
        raise DeploysterError(
            f"the admin token is set by {where}, which wins over the one kept in the data "
            f"dir: {'change it there' if args.rotate else 'it is the token to send'}")
    if args.rotate:
        print(admin_token.rotate(settings.data_dir))
        sys.stdout.flush()
        print("deployster: the admin token was replaced: the old one no longer works; "
              "update the secret CI sends", file=sys.stderr)
        return 0
    token, created = admin_token.ensure(settings.data_dir)
    print(token)
    if created:
        sys.stdout.flush()
        print(f"deployster: made the admin token, kept in "
              f"{admin_token.token_path(settings.data_dir)}", file=sys.stderr)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings, origins = Settings.load()
    config_file = os.environ.get(CONFIG_VAR)
    print(f"config file: {config_file} ({CONFIG_VAR})" if config_file
          else f"config file: none ({CONFIG_VAR} is not set)")
    rows = [(env_name(name), *_shown_setting(settings, name, origins[name]))
            for name in Settings.model_fields]
    name_width = max(len(name) for name, _, _ in rows)
    value_width = min(max(len(value) for _, value, _ in rows), 60)
    for name, value, origin in rows:
        print(f"{name:<{name_width}}  {value:<{value_width}}  ({origin})")
    return 0


def _shown_setting(settings: Settings, name: str, origin: str) -> tuple[str, str]:
    """A setting's value as ``deployster config`` prints it, and its origin:
    the token never (where it is kept instead), nor any other secret (a field
    kept out of repr: the metrics token…), URLs with passwords (and
    notification targets with their credential) masked, an unset URL as what
    is used in its place."""
    text = settings.to_env()[env_name(name)]
    if name == "token":
        if settings.token:
            return "(set, hidden)", origin
        path = admin_token.token_path(settings.data_dir)
        try:
            kept = admin_token.read(settings.data_dir)
        except DeploysterError as exc:
            return "(unreadable)", exc.message
        if kept:
            return "(kept, hidden)", f"data dir: {path}"
        return "(none yet: serve makes one)", f"data dir: {path}"
    if name == "notify":  # a Slack or Discord URL is a credential
        from .notify.targets import parse_target

        shown = [f"{t.kind}={t.shown_url()}" for t in map(parse_target, settings.notify)]
        return " ".join(shown) or "(empty)", origin
    if not Settings.model_fields[name].repr:  # a secret
        return ("(set, hidden)" if text else "(empty)"), origin
    if name == "node" and not text:  # unset: the kept name, else the host's (node.py)
        path = node.kept_path(settings)
        try:
            kept = node.kept_name(settings)
        except DeploysterError as exc:
            return "(unreadable)", exc.message
        if kept:
            return kept, f"kept in {path}"
        return node.host_node_name(), f"the host name; kept in {path} by the first serve"
    if name == "redis_url":
        return settings.redis_shown, origin
    if name == "database_url":
        return settings.database_shown, origin
    return (text if text else "(empty)"), origin


def cmd_tui(args: argparse.Namespace) -> int:
    settings = _settings(host=args.host, port=args.port)
    # Log lines would tear the screen: they go to a file in the data dir.
    _log_to_file(settings.data_dir / "tui.log")
    return asyncio.run(run_tui(settings, serve=args.serve))


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    root.setLevel(logging.INFO)


async def run_tui(settings: Settings, *, serve: bool = False) -> int:
    """The dashboard over the core; with ``serve`` the HTTP server (and so the
    dispatcher) runs in the same event loop. This is the one place that wires
    both front ends together: neither imports the other."""
    from .tui.app import make_app

    sock = None
    if serve:
        from .server.serve import bind_socket

        sock = bind_socket(settings)  # a port in use fails before the screen opens
    try:
        core = await Deployster.open(settings)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    if serve:
        from .server.serve import make_admin_token

        make_admin_token(settings)
    stop = asyncio.Event()
    server: asyncio.Task[None] | None = None
    code = 0
    try:
        if sock is not None:
            from hypercorn.asyncio import serve as hypercorn_serve

            from .server.app import create_app
            from .server.serve import hypercorn_config

            server = asyncio.create_task(hypercorn_serve(
                create_app(settings, core), hypercorn_config(sock), shutdown_trigger=stop.wait
            ))
        app = make_app(core)
        await app.run_async()
        # Textual sets a non-zero return code when the app crashed: say so to
        # the shell instead of a clean 0.
        code = app.return_code or 0
    finally:
        stop.set()
        if server is not None:
            try:
                await server
            except Exception as exc:  # the screen is gone: one line, details in the log
                logging.getLogger("deployster.tui").exception("the server failed")
                print(f"deployster: error: the server failed: {exc}", file=sys.stderr)
                code = 1
        if sock is not None:
            sock.close()
        await core.close()
    return code


def cmd_project_add(args: argparse.Namespace) -> int:
    pipeline = _read_pipeline(args.pipeline)

    if not args.path.strip():
        raise DeploysterError("the project path is empty")

    async def body(core: Deployster) -> int:
        project = await core.projects.add(
            # A shell user types "." or "apps/web": relative to where they stand.
            os.path.abspath(os.path.expanduser(args.path)), name=args.name, pipeline=pipeline,
            lock_ttl=args.lock_ttl, timeout=args.timeout, queue_policy=args.queue_policy,
            steps=_steps_from(args), notify=_notify_from(args),
        )
        print(f"registered project {project.name!r} (id {project.id}) at {project.path}")
        _warn_github_token(project, core.settings)
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_project_edit(args: argparse.Namespace) -> int:
    pipeline = _read_pipeline(args.pipeline)

    async def body(core: Deployster) -> int:
        project = await _find_project(core, args)
        project = await core.projects.edit(
            project, name=args.name, pipeline=pipeline,
            lock_ttl=args.lock_ttl, timeout=args.timeout, queue_policy=args.queue_policy,
            steps=_steps_from(args), notify=_notify_from(args),
        )
        print(f"updated project {project.name!r} (id {project.id})")
        _warn_github_token(project, core.settings)
        return 0

    return asyncio.run(_with_core(_settings(), body))


# The most terminal cells a list shows of a value (the rest is cut, "…"): a
# long name or ref must not push every later column off the screen.
NAME_CAP = 32
REF_CAP = 40


async def _find_project(core: Deployster, args: argparse.Namespace) -> Project:
    """The command's NAME|ID|PATH argument's project; a PATH on ``--node``
    when the command takes one (default: this host's node)."""
    return await core.projects.find(args.project, getattr(args, "node", None))


def cmd_project_list(args: argparse.Namespace) -> int:
    from .overview import project_summaries
    from .table import Column, render

    async def body(core: Deployster) -> int:
        projects = [p for p in await project_summaries(core)
                    if args.node is None or p["node"] == args.node]
        if args.json:
            print(json.dumps(projects, indent=2))
        elif not projects:
            print("no projects yet: register one with 'deployster project add PATH'")
        else:
            # The node column once there is more than one node to tell apart.
            nodes = len({p["node"] for p in projects}) > 1
            columns = [Column("ID", right=True), Column("NAME", NAME_CAP),
                       *([Column("NODE")] if nodes else []),
                       Column("QUEUED", right=True), Column("RUNNING"),
                       Column("DEPLOYED"), Column("PATH")]
            rows = [[str(p["id"]), p["name"], *([p["node"] or "-"] if nodes else []),
                     str(p["queue_length"]), p["running_job"] or "-",
                     (p["deployed_commit"] or "-")[:12], escape_controls(p["path"])]
                    for p in projects]
            print("\n".join(render(columns, rows)))
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_nodes(args: argparse.Namespace) -> int:
    from . import fleet
    from .table import Column, render

    async def body(core: Deployster) -> int:
        found = await fleet.nodes(core)
        counts: dict[str, int] = {}
        for project in await core.projects.all():
            counts[project.node] = counts.get(project.node, 0) + 1
        if args.forget is not None:
            await fleet.forget(core, args.forget, projects=counts.get(args.forget, 0))
            print(f"forgot node {args.forget!r}")
            return 0
        listed = [{**n.to_dict(), "projects": counts.get(n.name, 0),
                   "this": n.name == core.node} for n in found]
        if args.json:
            print(json.dumps(listed, indent=2))
            return 0
        if not listed:
            print(f"no node has announced itself on this Redis yet; this host's node is "
                  f"{core.node!r} (it appears once 'deployster serve' runs)")
            return 0
        columns = [Column("NODE"), Column("STATUS"), Column("HEARTBEAT", right=True),
                   Column("PROJECTS", right=True), Column("URL"), Column("HOST"),
                   Column("VERSION"), Column("STORAGE")]
        rows = [[n["name"] + (" (this)" if n["this"] else ""), "up" if n["up"] else "DOWN",
                 f"{n['heartbeat_age']:.0f}s ago", str(n["projects"]), n["url"] or "-",
                 n["host"], n["version"], f"{n['redis']} redis, {n['database']}"]
                for n in listed]
        print("\n".join(render(columns, rows)))
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_project_remove(args: argparse.Namespace) -> int:
    from .control import remove_project

    async def body(core: Deployster) -> int:
        project = await _find_project(core, args)
        done = await remove_project(core, project, force=args.force,
                                    drop_history=args.drop_history,
                                    actor=f"cli:{getpass.getuser()}")
        for job_id in done.cancelled:
            print(f"cancelled job {job_id}")
        if done.dropped is None:
            history = "its deploys stay in the history ('deployster job list')"
        else:
            history = f"{done.dropped} deploy(s) deleted from the history"
        print(f"removed project {project.name!r} (id {project.id}); {history}")
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_project_show(args: argparse.Namespace) -> int:
    async def body(core: Deployster) -> int:
        project = await _find_project(core, args)
        done = await completed_jobs(core, project.id, limit=1)
        _print_project(project, as_json=args.json, deployed=done[0] if done else None,
                       defaults=core.projects.notify_defaults)
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_project_token(args: argparse.Namespace) -> int:
    from . import tokens

    async def body(core: Deployster) -> int:
        project = await _find_project(core, args)
        if args.revoke:
            if await tokens.revoke(core.projects, project):
                print(f"revoked the token of project {project.name!r}: it no longer works")
            else:
                print(f"project {project.name!r} has no token; nothing to revoke")
            return 0
        token = await tokens.rotate(core.projects, project)
        replaced = " and replaces the previous one, which no longer works" if (
            project.token_hash is not None) else ""
        print(token)
        sys.stdout.flush()
        print(f"deployster: the token of project {project.name!r} is shown only once{replaced}; "
              "send it in the x-deployster-token header", file=sys.stderr)
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_job_cancel(args: argparse.Namespace) -> int:
    from .control import cancel_job

    async def body(core: Deployster) -> int:
        job = await cancel_job(core, args.job_id, actor=f"cli:{getpass.getuser()}")
        state = job.status.value + (f" ({job.reason})" if job.reason else "")
        if job.status.finished:
            print(f"job {job.id} cancelled: {state}")
        else:
            print(f"job {job.id}: cancel requested, still {state}")
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_job_list(args: argparse.Namespace) -> int:
    from . import store
    from .table import Column, render

    async def body(core: Deployster) -> int:
        project = await _find_project(core, args) if args.project else None
        rows = await store.select_deployments(
            core.db, project_id=project.id if project else None, limit=args.limit,
            node=args.node)
        # The history trails Redis by a moment: a job still live there shows
        # its state as of now.
        live = {j.id: j for j in await core.jobs.get_many([j.id for j in rows])}
        jobs = [live.get(j.id, j) for j in rows]
        if args.json:
            # GET /jobs/<id>'s fields but the commands (they may hold secrets:
            # 'job show' prints them masked), position and log_bytes (a read each).
            print(json.dumps([{**{k: v for k, v in j.to_dict().items() if k != "commands"},
                               "commands_masked": j.commands_masked} for j in jobs],
                             indent=2))
            return 0
        if not jobs:
            print(f"no deploys yet{f' of {project.name}' if project else ''}")
            return 0
        columns = [Column("JOB"), Column("PROJECT", NAME_CAP), Column("STATUS"),
                   Column("COMMIT"), Column("REF", REF_CAP), Column("QUEUED AT"),
                   Column("STARTED AT")]
        table = [[j.id, j.project, j.status.value + (f" ({j.reason})" if j.reason else ""),
                 escape_controls(j.commit_hash[:7]) or "-", escape_controls(j.ref_name) or "-",
                 j.queued_at or "-", j.started_at or "-"] for j in jobs]
        print("\n".join(render(columns, table)))
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_job_show(args: argparse.Namespace) -> int:
    async def body(core: Deployster) -> int:
        record = await core.job_record(args.job_id)
        if args.json:
            print(json.dumps(record, indent=2))
            return 0
        commands = record.pop("commands")
        masked = record.pop("commands_masked", False)
        # Escaped, and a multi-line command's further lines marked as in the
        # log's header (printable.command_header): no line of a request's text
        # can pass for a field, or rewrite one on the terminal.
        for key, value in record.items():
            if value is not None:
                print(f"{key + ':':<14}{escape_controls(str(value))}")
        for number, command in enumerate(commands, 1):
            first, *rest = escape_controls(command, keep_newlines=True).split("\n")
            print(f"{'commands:' if number == 1 else '':<14}[{number}] {first}")
            for line in rest:
                print(f"{'':<14}{CONTINUATION}{line}")
        if masked:
            print(f"{'':<14}(a secret in them is stored masked: the job cannot be redeployed)")
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_job_logs(args: argparse.Namespace) -> int:
    async def body(core: Deployster) -> int:
        out = sys.stdout.buffer  # a closed pipe (`| head`) ends quietly in main()
        async for _job, part in follow(core, args.job_id, 0):
            if part.text:
                out.write(part.text.encode("utf-8", "surrogateescape"))
                out.flush()
            if part.at_end and not args.follow:
                break
        return 0

    return asyncio.run(_with_core(_settings(), body))


def _confirm(question: str) -> bool:
    """Ask on stderr, read one line of stdin (a pipe works too: ``echo y |``);
    no answer (end of input) is no."""
    print(question, end="", file=sys.stderr, flush=True)
    try:
        answer, echoed = sys.stdin.readline(), sys.stdin.isatty()
    except (AttributeError, ValueError):  # no stdin (closed, or None)
        answer, echoed = "", False
    if not echoed:  # a terminal echoed the answer; say what a pipe gave
        print(answer.strip(), file=sys.stderr)
    return answer.strip().lower() in ("y", "yes")


def _span(seconds: float) -> str:
    """A duration for a person: 4.2s, 9m 41s, 2h 05m."""
    if seconds < 60:
        return f"{max(seconds, 0):.1f}s"
    minutes = int(seconds) // 60
    if minutes < 60:
        return f"{minutes}m {int(seconds) % 60:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _lock_facts(row: Any, queued: list[str], total: int) -> list[str]:
    """What the operator must know before releasing a lock: who holds it, for
    how long still, whether that job still runs, and what waits behind it
    (``total`` jobs, the first of them ``queued``)."""
    job = row.running
    if row.lock_ttl_ms is not None and row.lock_ttl_ms < 0:
        ttl = "no expiry"
    else:
        ttl = f"{_span((row.lock_ttl_ms or 0) / 1000)} left"
    beat = "none" if row.heartbeat_age is None else f"{_span(row.heartbeat_age)} ago"
    if job is None:
        holder = "no live job record: nobody is running it"
    elif job.status is not JobStatus.RUNNING:
        holder = f"not running (the job is {job.status.value})"
    elif row.stale:
        holder = "marked running, but its heartbeat stopped: its runner is likely gone"
    else:
        holder = "still running: its heartbeat is fresh"
    shown = ", ".join(queued[:5]) + (", …" if total > 5 else "")
    return [
        f"project:    {row.project.name} ({escape_controls(row.project.path)})",
        f"holder:     {row.lock_owner}",
        f"TTL:        {ttl}",
        f"heartbeat:  {beat}{' (STALE)' if row.stale else ''}",
        f"owning job: {holder}",
        f"queued:     {total} job(s) waiting" + (f": {shown}" if queued else ""),
    ]


def _attempt_result(row: dict[str, Any]) -> str:
    detail = row["detail"]
    outcome = str(detail.get("status") or detail.get("error") or "")
    word = row["action"].split(".", 1)[-1].replace("_", " ")
    if row["action"] == "notify.failed" and detail.get("retry_in_s") is not None:
        outcome += f", retry in {detail['retry_in_s']}s"
    return f"{word} ({outcome})" if outcome else word


def cmd_notifications(args: argparse.Namespace) -> int:
    from . import store
    from .table import Column, render

    async def body(core: Deployster) -> int:
        project = await _find_project(core, args) if args.project else None
        rows = await store.select_audit_events(
            core.db, limit=args.limit, action_prefix="notify.",
            project_id=project.id if project else None)
        async with core.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(core.keys.notify_due)
            pipe.xlen(core.keys.outbox)
            lanes, events = await pipe.execute()
        if args.json:
            print(json.dumps({"attempts": rows, "waiting": {"lanes": lanes, "events": events}},
                             indent=2))
            return 0
        names = {p.id: p.name for p in await core.projects.all()}
        if not rows:
            print("no notification attempts yet" + (f" for {project.name}" if project else ""))
        else:
            columns = [Column("AT"), Column("PROJECT", NAME_CAP), Column("JOB"),
                       Column("EVENT"), Column("TARGET"), Column("TRY", right=True),
                       Column("RESULT")]
            table = [[r["at"], names.get(r["project_id"], str(r["project_id"] or "-")),
                      r["job_id"] or "-", str(r["detail"].get("event", "-")),
                      escape_controls(str(r["detail"].get("target", "-"))),
                      str(r["detail"].get("attempt", "-")), _attempt_result(r)] for r in rows]
            print("\n".join(render(columns, table)))
        print(f"waiting: {lanes} delivery lane(s) with a delivery due or retrying; "
              f"{events} event(s) not yet read")
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_unlock(args: argparse.Namespace) -> int:
    from .control import release_lock
    from .overview import project_rows

    async def body(core: Deployster) -> int:
        project = await _find_project(core, args)
        row = next((r for r in await project_rows(core, last={}) if r.project.id == project.id),
                   None)
        if row is None or row.lock_owner is None:
            raise Conflict(f"project {project.name!r} is not locked: nothing to release",
                           code="not_locked")
        owner = row.lock_owner
        print("\n".join(_lock_facts(row, *await core.queue.window(project.id, 5))))
        if row.running is not None and row.running.status is JobStatus.RUNNING \
                and not row.stale:
            print("warning:    the holder is alive and renewing its lock; releasing it ends "
                  "that job (lock_lost) and lets the next one start")
        print(f"Releasing frees the lock only if {owner} still holds it (compare-and-set: a "
              "newer lock is never deleted), records an audit event and wakes the queue, so a "
              "running server starts the next queued job.")
        sys.stdout.flush()
        if not args.yes and not _confirm(f"Release {project.name}'s deploy lock? [y/N] "):
            print("deployster: not released (answer y, or pass --yes)", file=sys.stderr)
            return 1
        if not await release_lock(core, project.id, owner, actor=f"cli:{getpass.getuser()}"):
            raise Conflict(f"{project.name}'s lock was not released: {owner} no longer holds "
                           "it (nothing changed)", code="lock_moved")
        print(f"released {project.name}'s lock (was held by {owner})")
        return 0

    return asyncio.run(_with_core(_settings(), body))


def _queued(result: Any, target: Any, note: str) -> None:
    """What a redeploy or rollback queued, as ``deploy --detach`` says it: the
    new job id on stdout, the rest on stderr."""
    print(result.job_id)
    sys.stdout.flush()
    where = "queued" if result.queued else "started"
    print(f"deployster: {where} job {result.job_id}: {note} of job {target.id} "
          f"(commit {deployed_commit(target)[:12]}); follow it with 'deployster job logs -f "
          f"{result.job_id}'", file=sys.stderr)


def cmd_job_redeploy(args: argparse.Namespace) -> int:
    async def body(core: Deployster) -> int:
        result, target = await redeploy(core, args.job_id, actor=f"cli:{getpass.getuser()}")
        _queued(result, target, "redeploy")
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_rollback(args: argparse.Namespace) -> int:
    async def body(core: Deployster) -> int:
        project = await _find_project(core, args)
        result, target, current = await rollback(core, project, to=args.to,
                                                 actor=f"cli:{getpass.getuser()}")
        _queued(result, target, f"rollback from {(current or 'none')[:12]}")
        return 0

    return asyncio.run(_with_core(_settings(), body))


def cmd_history_prune(args: argparse.Namespace) -> int:
    from . import events
    from .pruning import DAY, prune_history

    settings = _settings()
    days = args.days if args.days is not None else settings.history_days
    if not days:
        raise DeploysterError("give --days N (or set DEPLOYSTER_HISTORY_DAYS): how old a "
                              "finished deploy must be to go")
    keep = args.keep if args.keep is not None else settings.history_keep

    async def body(core: Deployster) -> int:
        result = await prune_history(core.db, older_than=days * DAY, keep=keep,
                                     dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {result.deleted} finished deploy(s) requested more than {days:g} "
              f"day(s) ago; each project keeps its {keep} newest")
        if result.deleted and not args.dry_run:  # a running dashboard reads it again
            await core.redis.publish(core.keys.feed, events.encode(events.HISTORY))
        return 0

    return asyncio.run(_with_core(settings, body))


def cmd_deploy(args: argparse.Namespace) -> int:
    try:
        options = client.options_from(args)
        if not options.token.strip() and _is_loopback(options.url):
            # A deploy to this machine's server: its admin token, as it reads it.
            options = dataclasses.replace(options, token=_local_admin_token())
        return client.run(options)
    except client.ClientError as exc:
        raise DeploysterError(exc.message, code=exc.code) from None


def _is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine (127.0.0.0/8, ::1, localhost):
    the kept admin token is never sent anywhere else."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_admin_token() -> str:
    """The admin token a server of these settings uses (DEPLOYSTER_TOKEN is
    known to be unset): the config file's, else the one kept in the data dir;
    "" when there is none (the client then says it needs a token)."""
    try:
        settings = Settings.from_env()
        return settings.token or admin_token.read(settings.data_dir) or ""
    except DeploysterError:
        return ""


# ----------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    try:
        code = _run(argv)
        sys.stdout.flush()  # what is still buffered fails here, in the guard, not at exit
    except SystemExit:  # argparse: --help, --version, a usage error
        _flush_stdout()
        raise
    except DeploysterError as exc:
        print(f"deployster: error: {exc.message}", file=sys.stderr)
        code = exc.exit_status
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        code = _failure(exc)
    _flush_stdout()
    return _exit_past_leaked_threads(code)


# The exit status of a command whose stdout reader went away, as coreutils give
# it (killed by SIGPIPE: 128 + 13).
READER_GONE = 141


def _failure(exc: Exception) -> int:
    """The exit status for an exception no command handled, after at most one
    line on stderr. A bug is re-raised: its traceback is what it should give."""
    outage = classify(exc)
    if outage is None and isinstance(exc, BrokenPipeError):
        # No backing service raised it (their client libraries wrap their
        # sockets' errors): stdout's reader went away (`| head -1`) with what
        # it wanted. End quietly.
        client.silence(sys.stdout)
        return READER_GONE
    if outage is not None:
        state = describe(exc) if isinstance(exc, RedisRefused) else "unavailable"
        print(f"deployster: error: {outage.service} is {state}: {exc or type(exc).__name__}",
              file=sys.stderr)
        return 2
    if isinstance(exc, OSError):  # a file or directory the settings name
        where = f": {exc.filename}" if exc.filename else ""
        print(f"deployster: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    raise exc


def _flush_stdout() -> None:
    """Flush stdout; if its reader went away, point it at /dev/null so the
    interpreter's last flush cannot fail ("Exception ignored", exit 120)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        client.silence(sys.stdout)
    except (OSError, ValueError):
        pass


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # what parse_args does, but a deploy step's error stays one line
        if getattr(args, "command", None) == "deploy":
            client.unrecognized(args.parser, extra)
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.command == "serve" else logging.WARNING,
        format=logformat.TEXT,
    )
    logformat.use("text")  # fields as key=value; serve switches to its setting
    logging.getLogger("databases").setLevel(logging.WARNING)
    # Its pool logs a traceback per failed reconnect; ours says it once, in a line.
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
    # The notifier's client (aiohttp): nothing of it below a warning, where a
    # line could name a target's URL (a Slack or Discord URL is a credential).
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _exit_past_leaked_threads(code: int) -> int:
    """Exit even if a database connection thread was left open.

    aiosqlite runs its connection in a non-daemon thread, and the interpreter
    waits for such threads at exit. The cause seen so far (a connection per
    query, one of them cancelled mid-open) is gone: ``db._SQLiteDatabase``
    holds one connection for the database's life. This stays as a net for a
    path that fails before ``Deployster.close``: everything that matters is
    flushed by now, so leave without waiting.
    """
    leftovers = [
        t for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]
    if leftovers:
        logging.getLogger("deployster").debug("exiting past %d idle threads", len(leftovers))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
