"""The server's own log lines: plain text or one JSON object a line
(``DEPLOYSTER_LOG_FORMAT``), for a person at a terminal or a log shipper.

A line may carry fields (``extra={"fields": {...}}``: method, path, status,
ms, project, job_id, …): the text format appends them as ``key=value``, the
JSON format gives them as keys of their own. Tokens are never among them: the
request line names the path, not its headers or query (server/app.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# One line per job event (queued, started, finished): service.py, dispatcher.py.
job_log = logging.getLogger("deployster.jobs")


def fields(record: logging.LogRecord) -> dict[str, Any]:
    found = getattr(record, "fields", None)
    return found if isinstance(found, dict) else {}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in fields(record).items() if v not in (None, ""))
        return f"{line} {extra}" if extra else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in fields(record).items() if v not in (None, "")})
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def use(format_name: str) -> None:
    """Give every handler of the root logger the ``text`` or ``json`` format."""
    formatter: logging.Formatter = JsonFormatter() if format_name == "json" else TextFormatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
