"""The OpenAPI document (``/openapi.json``): quart-schema builds it from the
routes' models; this adds what every route shares and the SSE reply.

- Every route answers 503 ``{"error", "code"}`` while Redis or the database is
  down, and every token-protected route 403 for a missing or wrong token.
- A route with a JSON body requires it, and may answer 400 (not JSON), 413 (too
  large), 415 (not sent as JSON) and 422 (wrong shape, or no body), from the
  app-wide handlers.
- ``GET /jobs/{job_id}/stream`` answers ``text/event-stream``; ``GET /client``
  and ``GET /metrics`` text (``deployster_media_type``), the latter with its
  own errors (``deployster_errors``).
- ``POST /deploy``'s ``commands.maxItems`` is the running server's
  ``DEPLOYSTER_MAX_COMMANDS``. (A command's limit is in bytes, which JSON Schema
  cannot say: it is in the description.)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from quart_schema import APIKeySecurityScheme, OpenAPIProvider
from werkzeug.routing import Rule

from .schemas import SSE_EVENTS, ErrorReply

# The name of the security scheme for the ``x-deployster-token`` header.
TOKEN_SCHEME = "token"
SECURITY_SCHEMES: dict[str, Any] = {
    TOKEN_SCHEME: APIKeySecurityScheme(name="x-deployster-token", in_="header")
}
TOKEN_DESCRIPTION = "The admin token (DEPLOYSTER_TOKEN) or a project's token (dps_…)."

_ERROR_REF = {"$ref": f"#/components/schemas/{ErrorReply.__name__}"}

_COMMON: dict[int, str] = {503: "Redis or the database is unavailable; try again shortly."}
_PROTECTED: dict[int, str] = {403: "Missing or wrong token (or outside the token's project)."}
_WITH_BODY: dict[int, str] = {
    400: "The body is not valid JSON.",
    413: "The body is larger than the limit.",
    415: "The body was not sent as application/json.",
    422: "The body does not have the expected shape or values.",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


class DeploysterOpenAPI(OpenAPIProvider):
    def schema(self) -> dict[str, Any]:
        document = super().schema()
        components = document["components"]
        models: list[type[BaseModel]] = [ErrorReply, *SSE_EVENTS.values()]
        for model in models:
            components["schemas"].setdefault(model.__name__, model.model_json_schema())
        components.get("securitySchemes", {}).get(TOKEN_SCHEME, {}).setdefault(
            "description", TOKEN_DESCRIPTION
        )
        return document

    def build_paths(self, rule: Rule) -> tuple[dict, dict]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        for operations in paths.values():
            for operation in operations.values():
                self._complete(operation, func)
        return paths, components

    def _complete(self, operation: dict[str, Any], func: Any) -> None:
        self._limit_commands(operation)
        responses = operation["responses"]
        media_type = getattr(func, "deployster_media_type", None)
        if media_type:  # no JSON: a file, or text; its own errors, if any
            responses.clear()
            responses[200] = {"description": getattr(func, "deployster_reply", "The file."),
                              "content": {media_type: {"schema": {"type": "string"}}}}
            for status, description in getattr(func, "deployster_errors", {}).items():
                responses[status] = _error(description)
            return
        extra = dict(_COMMON)
        if operation.get("security") != []:  # [] marks a route without a token
            extra.update(_PROTECTED)
        if "requestBody" in operation:
            extra.update(_WITH_BODY)
            # quart-schema leaves it optional; a request without one is a 422.
            operation["requestBody"]["required"] = True
        for status, description in extra.items():
            if status not in responses:  # quart-schema's keys are ints too
                responses[status] = _error(description)
        if getattr(func, "deployster_event_stream", False):
            responses[200] = {
                "description": "Server-Sent Events (see the operation's description).",
                "content": {"text/event-stream": {"schema": _event_schema()}},
            }


    def _limit_commands(self, operation: dict[str, Any]) -> None:
        """The body's ``commands`` limits, as this server's settings have them."""
        core = self._app.extensions.get("deployster")
        if core is None:  # not serving: the defaults stay
            return
        content = operation.get("requestBody", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        commands = schema.get("properties", {}).get("commands")
        if commands is None or "maxItems" not in commands:
            return
        commands["maxItems"] = core.settings.max_commands


def _event_schema() -> dict[str, Any]:
    """One event of the stream (OpenAPI 3.1: ``schema`` describes each event):
    its name, its ``data`` (one line of JSON, shaped per event) and, for log
    events, its ``id`` (the cursor)."""
    variants = []
    for name, model in SSE_EVENTS.items():
        variant: dict[str, Any] = {
            "type": "object",
            "properties": {
                "event": {"const": name},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": f"#/components/schemas/{model.__name__}"},
                },
                "id": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "required": ["event", "data", *(["id"] if name == "log" else [])],
        }
        variants.append(variant)
    return {"oneOf": variants}
