"""``GET /metrics``: the Prometheus text format (``deployster/metrics.py``
reads and renders it; README.md#metrics lists what it shows). Open unless
``DEPLOYSTER_METRICS_TOKEN`` is set, as exporters are; then that token as a
bearer token, or 401."""

from __future__ import annotations

from quart import Blueprint, Response
from quart_schema import security_scheme

from .. import metrics
from .auth import require_bearer
from .context import core

blueprint = Blueprint("metrics", __name__)

UNAUTHORIZED_HINT = ("send the metrics token (DEPLOYSTER_METRICS_TOKEN) in the header "
                     "'Authorization: Bearer <token>'")


@blueprint.get("/metrics")
@security_scheme([])  # not the deploy token: its own bearer token, when one is set
async def metrics_page() -> Response:
    """Prometheus metrics, in the text format.

    Deploys, queues, locks, hand-offs, logs, notifications and runners, read
    from Redis and the registry (the same from any server process). With
    `DEPLOYSTER_METRICS_TOKEN` set, send it as `Authorization: Bearer <token>`
    (else 401)."""
    the_core = core()
    require_bearer(the_core.settings.metrics_token, realm="deployster metrics",
                   hint=UNAUTHORIZED_HINT)
    return Response(await metrics.exposition(the_core), status=200,
                    headers={"content-type": metrics.CONTENT_TYPE})


metrics_page.deployster_media_type = "text/plain"  # type: ignore[attr-defined]
metrics_page.deployster_reply = (  # type: ignore[attr-defined]
    "The metrics, Prometheus text format 0.0.4.")
metrics_page.deployster_errors = {  # type: ignore[attr-defined]
    401: "DEPLOYSTER_METRICS_TOKEN is set and the request did not send it as a bearer token.",
    503: "Redis or the database is unavailable; try again shortly.",
}
