"""Log lines cannot be forged: control characters escaped, tracebacks indented, values cut."""
from __future__ import annotations

import json
import logging
import sys

from kernel.logs import (MAX_MESSAGE_CHARS, MAX_VALUE_CHARS, TRACEBACK_INDENT, JsonFormatter,
                          TextFormatter, Untrusted)

FORGED = "\n2026-11-22 10:00:00,000 INFO    medgate.iomt: forged"


def record(msg: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("medgate.iomt", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_text_writes_one_line_with_every_control_character_escaped():
    line = TextFormatter().format(record("payload on %s dead-lettered: %s",
                                         f"medgate/w{FORGED}/b/vitals", "NUL \x00 ESC \x1b[31m CR \r"))
    assert "\n" not in line and "\r" not in line and "\x00" not in line and "\x1b" not in line
    assert "\\n2026-11-22 10:00:00,000 INFO    medgate.iomt: forged" in line
    assert "NUL \\x00 ESC \\x1b[31m CR \\r" in line
    for char in ("\x85", "\u2028", "\u2029", "\u202e", "\x7f"):
        assert char not in TextFormatter().format(record("a%sb", char))


def test_a_traceback_follows_indented():
    try:
        raise ValueError(f"bad payload{FORGED}")
    except ValueError:
        failed = record("message on %s failed", "medgate/w/b/vitals", exc_info=sys.exc_info())
    lines = TextFormatter().format(failed).split("\n")
    assert lines[0].endswith("message on medgate/w/b/vitals failed")
    assert all(line.startswith(TRACEBACK_INDENT) for line in lines[1:]) and len(lines) > 2
    assert f"{TRACEBACK_INDENT}2026-11-22 10:00:00,000 INFO    medgate.iomt: forged" in lines


def test_json_is_one_line_and_reads_back_the_original():
    text = f"on {FORGED} \x85 \u2028 \u202e \x1b"
    line = JsonFormatter().format(record("%s", text))
    assert len(line.splitlines()) == 1 and "\x1b" not in line and "\u202e" not in line
    assert json.loads(line)["message"] == text


def test_messages_and_untrusted_values_are_cut():
    value = "x" * 60_000
    shown = str(Untrusted(value))
    assert shown.startswith("x" * MAX_VALUE_CHARS) and len(shown) < MAX_VALUE_CHARS + 40
    assert "59744 more characters" in shown
    assert str(Untrusted(b"\x00" * 10_000)).startswith("\\x00")
    line = TextFormatter().format(record("%s", value))
    assert len(line) < MAX_MESSAGE_CHARS + 200
    assert len(json.loads(JsonFormatter().format(record("%s", value)))["message"]) < MAX_MESSAGE_CHARS + 40


def test_a_forged_correlation_id_is_escaped():
    failed = record("x")
    failed.correlation_id = f"mqtt:MON-1{FORGED}"
    assert "\n" not in TextFormatter().format(failed)
