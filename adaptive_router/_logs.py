"""The process log: timestamped lines or one JSON object per line, at the configured level.

    configure_logging("info", "json")
    log.info("access", extra={"fields": {"request_id": "r1", "status": 200}})
    # {"ts": "2026-12-02T05:40:00.123Z", "level": "info", "logger": "...", "message": "access",
    #  "request_id": "r1", "status": 200}

A record's ``fields`` (a flat dict) become ``key=value`` pairs after the message in text mode and
top-level keys in JSON mode; nothing else is added, so a caller decides what may be logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from ._json import dumps

__all__ = ["JsonFormatter", "TextFormatter", "Throttle", "configure_logging"]

_HANDLER_NAME = "adaptive-router"
_QUIET = ("httpx", "httpcore")  # one INFO line per upstream call is noise


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. ``2026-12-02T05:40:00.123Z``."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _text_value(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


class TextFormatter(logging.Formatter):
    """``2026-12-02T05:40:00.123Z INFO adaptive_router.access: access request_id=r1 status=200``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        try:
            return dumps(data).decode()
        except TypeError:  # a value the fast codec does not know (a NumPy scalar): its text
            return json.dumps(data, default=str, ensure_ascii=False, separators=(",", ":"))


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every logger (uvicorn's included) to stderr in ``fmt`` at ``level``; safe to call again."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()  # uvicorn's own config may have added one: ours, once
        uvicorn_logger.propagate = True


class Throttle:
    """At most one log line per key every ``interval_s``; ``allow`` says how many were held back.

    limiter = Throttle(10.0)
    held = limiter.allow("lab/fast")    # None: stay quiet; an int: log, and mention ``held``
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
