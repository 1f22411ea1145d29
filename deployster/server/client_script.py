"""``GET /client``: the CI client (``deployster/client.py``) as a script.

The client is one standard-library file, so a CI job needs nothing installed:

    curl -fsSL "$DEPLOYSTER_URL/client" -o deployster.py
    python3 deployster.py deploy --cd /var/www/my-app -- "git pull" "supervisorctl restart my-app"

and it always matches the server it talks to. No token: it is this project's
own public code.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from quart import Blueprint, Response
from quart_schema import security_scheme

from deployster import client

blueprint = Blueprint("client_script", __name__)
MEDIA_TYPE = "text/x-python"


@cache
def _source() -> bytes:
    return Path(client.__file__).read_bytes()


@blueprint.get("/client")
@security_scheme([])  # no token
async def client_script() -> Response:
    """The CI client as a Python 3.8+ script with no dependencies: run it with
    ``python3 deployster.py deploy --cd DIR -- COMMAND...`` (see its ``--help``)."""
    return Response(_source(), status=200, headers={
        "content-type": f"{MEDIA_TYPE}; charset=utf-8",
        "content-disposition": 'inline; filename="deployster.py"',
        "cache-control": "no-cache",  # a server upgrade serves the new client at once
    })


client_script.deployster_media_type = MEDIA_TYPE  # type: ignore[attr-defined]
