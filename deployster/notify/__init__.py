"""Telling people about deploys: notifications and GitHub deployments
(README.md#notifications, README.md#github-deployments).

- ``targets``: a project's targets and GitHub link, checked where they are
  entered (``project add|edit``, the settings);
- ``routes``: which events each project wants, kept in Redis for the queue
  scripts, which write an event to the outbox in the same step as the change
  it tells of (``redis_scripts/outbox.lua``);
- ``messages``: the bodies (webhook JSON, signed; Slack; Discord);
- ``github``: the calls that create a GitHub deployment and post its statuses;
- ``outbox``: the ``Notifier`` that turns outbox events into deliveries and
  sends them, at least once, retried with backoff, off every job's path.
"""
