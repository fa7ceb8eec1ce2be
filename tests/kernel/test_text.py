"""One definition of unsafe characters (kernel.text): what a message refuses is what a log escapes."""
from __future__ import annotations

import json
import logging
import sys
import unicodedata

import pytest

from kernel.logs import JsonFormatter, TextFormatter, Untrusted, escape
from kernel.text import UNSAFE_CATEGORIES, describe_unsafe, unsafe_character

#: Every character of the unsafe categories (C0/C1 controls, format characters such as U+200B and
#: U+E0001, the line/paragraph separators, the surrogates).
UNSAFE = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in UNSAFE_CATEGORIES)


def record(msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("medgate.iomt", logging.WARNING, __file__, 1, msg, args, None)


def test_text_refuses_each_unsafe_category_and_names_the_character():
    assert {unicodedata.category(c) for c in UNSAFE} == UNSAFE_CATEGORIES
    assert unsafe_character("Nguyễn Văn A, giường 12") is None  # printable text beyond ASCII passes
    assert describe_unsafe("MON\u200b-1") == "U+200B (Cf) at character 3"
    assert describe_unsafe("ok\udc80") == "U+DC80 (Cs) at character 2"


def test_the_text_log_escapes_every_character_text_refuses():
    line = TextFormatter().format(record("device %s", Untrusted(UNSAFE, limit=len(UNSAFE))))
    assert unsafe_character(line) is None
    assert line.encode("utf-8")  # a lone surrogate would make the log stream fail
    assert escape("\u200b \U000e0001 \udc80 \n \x85") == "\\u200b \\U000e0001 \\udc80 \\n \\x85"


def test_the_json_log_escapes_every_character_text_refuses_and_reads_back():
    text = f"device {' '.join(UNSAFE)} end"  # apart: two escaped surrogates side by side read as one pair
    line = JsonFormatter().format(record("%s", text))
    assert unsafe_character(line) is None and len(line.splitlines()) == 1
    assert json.loads(line.encode("utf-8"))["message"] == text


@pytest.mark.parametrize("kept", ["Nguyễn Văn A", "giường\u00a012", "37.5 °C", "SpO₂ 92 %", "🫀"])
def test_printable_text_is_logged_as_is(kept):
    assert escape(kept) == kept
    assert json.loads(JsonFormatter().format(record("%s", kept)))["message"] == kept
    assert kept in JsonFormatter().format(record("%s", kept))
