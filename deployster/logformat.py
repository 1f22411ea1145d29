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
import time
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
        self._second: int | None = None
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The date and time are made once a second, not once a line: a busy
        # server writes a line per request (bench/deploy_throughput.py).
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
        return f"{self._stamp},{int(record.msecs):03d}"  # as logging.Formatter writes it

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
    """Give every handler of the root logger the ``text`` or ``json`` format.

    Neither format shows the thread or the process, so log records no longer
    look them up (the logging HOWTO's "Optimization" section)."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    formatter: logging.Formatter = JsonFormatter() if format_name == "json" else TextFormatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
