"""Schemathesis hooks for a run against a served deployster, as
``tests/server/test_openapi_fuzz.py`` makes one; by hand::

    SCHEMATHESIS_HOOKS=tests.server.schemathesis_hooks DEPLOYSTER_FUZZ_CD=/nonexistent \\
        schemathesis run http://127.0.0.1:3259/openapi.json --checks all \\
        -H "x-deployster-token: $DEPLOYSTER_TOKEN"

- Nothing fuzzed can run a command: every ``POST /deploy`` body's ``cd`` (a
  string) is replaced by ``DEPLOYSTER_FUZZ_CD``, a directory that is not
  registered (with ``DEPLOYSTER_ALLOWED_ROOTS`` unset nothing self-registers),
  so the deploy is refused (404) before anything is queued.
- The last command becomes ``supervisorctl restart fuzz``: the rule on the
  last item of ``commands`` is one JSON Schema cannot state (the description
  does), so without this every schema-valid body would be a 422 that
  ``positive_data_acceptance`` reports. The body is checked against the schema
  again after this (schemathesis revalidates what a ``before_call`` hook
  changed), so a body still invalid elsewhere is still expected to be refused.
- With ``DEPLOYSTER_FUZZ_JOB`` set, about half of the path ``job_id``s become
  that job's id (a real, finished job), so reads of a real record, log and
  stream are fuzzed too, and its cancel is a 409.
- With ``DEPLOYSTER_FUZZ_SEEN`` set, each answer is appended to that file as a
  JSON line ``[operation, status]``.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import schemathesis

VALID_LAST_COMMAND = "supervisorctl restart fuzz"
_COIN = random.Random(5)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("cd"), str):
        body["cd"] = os.environ.get("DEPLOYSTER_FUZZ_CD", "/nonexistent/deployster-fuzz")
        commands = body.get("commands")
        if isinstance(commands, list) and commands and isinstance(commands[-1], str):
            commands[-1] = VALID_LAST_COMMAND
    real_job = os.environ.get("DEPLOYSTER_FUZZ_JOB")
    params = case.path_parameters
    if real_job and params and isinstance(params.get("job_id"), str):
        # A seeded coin: with one worker, a deterministic run repeats itself.
        if _COIN.random() < 0.5:
            params["job_id"] = real_job


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    seen = os.environ.get("DEPLOYSTER_FUZZ_SEEN")
    if seen:
        with open(seen, "a", encoding="utf-8") as out:
            label = f"{case.method.upper()} {case.operation.path}"
            out.write(json.dumps([label, response.status_code]) + "\n")
