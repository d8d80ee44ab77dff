"""Structured logs: one JSON object a line, each with the task, tenant and agent it is about.

While a task's handler runs, everything logged in its context carries the task's
id, tenant and agent (``TASK``, set by ``runtime.telemetry``); a line may also name
them itself (``extra={"task_id": ...}``). Secrets never reach a log: keys are never
logged, and a task's arguments are not either.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# The task whose handler is running in this context: (task id, tenant, agent).
TASK: ContextVar[tuple[str, str, str | None] | None] = ContextVar("cloudskills_log_task", default=None)
FIELDS = ("task_id", "tenant", "agent", "skill", "op", "state", "cost_micros", "duration_s", "reason")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        task = TASK.get()
        if task is not None:
            line["task_id"], line["tenant"], line["agent"] = task
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(json_lines: bool, level: int | None = None) -> None:
    """Log to stderr, as JSON lines when asked (the server's ``log_json`` setting)."""
    root = logging.getLogger()
    if level is not None:
        root.setLevel(level)
    if not json_lines:
        return
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())
