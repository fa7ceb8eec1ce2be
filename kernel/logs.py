"""Logging set-up shared by the CLI commands: ``text`` for people, ``json`` for log pipelines.

``logging.format: json`` (``MEDGATE_LOGGING__FORMAT=json``) writes one JSON object per line:
``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``thread``, ``correlation_id`` when
one is in effect (:mod:`kernel.correlation`), ``exception`` with the traceback when there is one,
and every field passed with ``extra=``.  The text format shows the correlation id in brackets after
the logger name.  ``docs/observability.md`` describes both.

Log lines carry what devices, modalities and clients sent (topics, device ids, payload errors), so
neither format lets a value start a line of its own, drive a terminal or reorder what a person
reads. The text format writes the characters :mod:`kernel.text` refuses in input (C0 including CR,
LF, NUL and ESC, DEL, C1, format characters such as the bidirectional overrides and zero-width
characters, the Unicode line and paragraph separators, lone surrogates) as ``\\n``, ``\\x1b``,
``\\u2028``, ``\\U000e0001``; the lines of a traceback follow indented, so a line that starts at the
left margin always starts a record. The JSON format escapes the same characters inside its strings
(``\\uXXXX``, a UTF-16 pair beyond U+FFFF, RFC 8259 section 7), so a parser still reads the original
text. A message is cut at :data:`MAX_MESSAGE_CHARS`; callers wrap a value that came from outside in
:class:`Untrusted`, cut at :data:`MAX_VALUE_CHARS`.
"""
from __future__ import annotations

import json
import logging
import time

from kernel.correlation import current_id
from kernel.text import replace_unsafe

FORMATS = ("text", "json")
MAX_MESSAGE_CHARS = 8192  # one record's message; the rest is replaced by a count
MAX_VALUE_CHARS = 256  # one value from outside (a topic, a device id, a payload error)
TRACEBACK_INDENT = "    "  # before each traceback line: only a record starts at the left margin
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
NOISY = ("pynetdicom", "amqtt", "transitions", "filelock", "highdicom")
#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime",
                                                                                    "correlation_id"}


def _escape_one(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape_one(char: str) -> str:
    """RFC 8259 section 7: ``\\uXXXX``, beyond the BMP as its UTF-16 surrogate pair."""
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xd800 + (code >> 10):04x}\\u{0xdc00 + (code & 0x3ff):04x}"


def escape(text: str) -> str:
    """``text`` with every unsafe character written as an escape (see the module docstring)."""
    return replace_unsafe(text, _escape_one)


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class Untrusted:
    """A value from outside, for a log call's arguments: formatted escaped and cut at ``limit``
    characters, and only when the record is written (``log.warning("on %s", Untrusted(topic))``)."""

    __slots__ = ("value", "limit")

    def __init__(self, value, limit: int = MAX_VALUE_CHARS) -> None:
        self.value, self.limit = value, limit

    def __str__(self) -> str:
        value = self.value
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value[:self.limit + 1]).decode("utf-8", "replace")
        return escape(cut(str(value), self.limit))

    __repr__ = __str__


def _correlation(record: logging.LogRecord) -> str | None:
    given = record.__dict__.get("correlation_id")
    found = str(given) if given is not None else current_id()
    return cut(found, MAX_VALUE_CHARS) if found is not None else None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {"time": f"{seconds}.{int(record.msecs):03d}Z", "level": record.levelname,
                 "logger": record.name, "message": cut(record.getMessage(), MAX_MESSAGE_CHARS),
                 "thread": record.threadName}
        correlation_id = _correlation(record)
        if correlation_id is not None:
            entry["correlation_id"] = correlation_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = cut(value, MAX_MESSAGE_CHARS) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(entry, ensure_ascii=False, default=str)
        return replace_unsafe(line, _json_escape_one)  # json.dumps escapes C0 itself, not the rest


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [correlation id]: message``, escaped (see the module docstring);
    a traceback follows on lines indented by :data:`TRACEBACK_INDENT`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(cid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        correlation_id = _correlation(record)
        record.cid = f" [{escape(str(correlation_id))}]" if correlation_id else ""
        record.message = escape(cut(record.getMessage(), MAX_MESSAGE_CHARS))
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        try:
            line = self.formatMessage(record)
        finally:
            del record.cid
        extra = []
        if record.exc_info:
            extra.append(self.formatException(record.exc_info))
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for text in extra:  # each line escaped and indented: none can pass for a record
            line += "".join(f"\n{TRACEBACK_INDENT}{escape(part)}" for part in text.split("\n"))
        return line


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
