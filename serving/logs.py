"""Logging set-up shared by the CLI commands: ``text`` for people, ``json`` for log pipelines.

``logging.format: json`` (``MEDGATE_LOGGING__FORMAT=json``) writes one JSON object per line:
``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``thread``, ``correlation_id`` when
one is in effect (:mod:`serving.correlation`), ``exception`` with the traceback when there is one,
and every field passed with ``extra=``.  The text format shows the correlation id in brackets after
the logger name.  ``docs/observability.md`` describes both.
"""
from __future__ import annotations

import json
import logging
import time

from serving.correlation import current_id

FORMATS = ("text", "json")
NOISY = ("pynetdicom", "amqtt", "transitions", "filelock", "highdicom")
#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime",
                                                                                    "correlation_id"}


def _correlation(record: logging.LogRecord) -> str | None:
    given = record.__dict__.get("correlation_id")
    return str(given) if given is not None else current_id()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {"time": f"{seconds}.{int(record.msecs):03d}Z", "level": record.levelname,
                 "logger": record.name, "message": record.getMessage(), "thread": record.threadName}
        correlation_id = _correlation(record)
        if correlation_id is not None:
            entry["correlation_id"] = correlation_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [correlation id]: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(cid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        correlation_id = _correlation(record)
        record.cid = f" [{correlation_id}]" if correlation_id else ""
        try:
            return super().format(record)
        finally:
            del record.cid


def formatter(fmt: str = "text") -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"`fmt` must be one of {FORMATS}, {fmt!r} is given.")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` (``text`` or ``json``); a no-op if logging is set up."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
