"""Characters that have no place in a name or identifier sent from outside (a topic level, a device
id): stdlib only, so every layer may use it.

Unsafe are the Unicode general categories (Unicode Standard 4.5, UAX #44 5.7.1) ``Cc`` (C0 controls
including NUL, CR, LF and ESC, DEL, C1 controls), ``Cf`` (format characters: the bidirectional
embeddings, overrides and isolates of Unicode TR9 2.1-2.4 such as U+202E and U+2066, zero-width
characters, U+FEFF), ``Zl`` and ``Zp`` (U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR) and
``Cs`` (a lone surrogate, which no UTF-8 encoder accepts).  Such a character would start a line of
its own, reorder what a person reads on the ward board or in a log, or hide one name inside
another.  Input is refused with :func:`describe_unsafe`; :mod:`kernel.logs` writes the same
characters escaped (:func:`replace_unsafe`): one definition for both.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Callable

#: The general categories refused (see the module docstring).
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NOT_PRINTABLE_ASCII = re.compile("[^\x20-\x7e]")  # where an unsafe character may be


def unsafe_character(text: str) -> tuple[int, str] | None:
    """The index and the character of the first unsafe character in ``text``, or None."""
    if text.isprintable():  # no unsafe character is printable: the common case in one call
        return None
    for index, char in enumerate(text):
        if unicodedata.category(char) in UNSAFE_CATEGORIES:
            return index, char
    return None


def describe_unsafe(text: str) -> str | None:
    """Why ``text`` is refused (``U+202E (Cf) at character 3``), or None when it holds no unsafe
    character."""
    found = unsafe_character(text)
    if found is None:
        return None
    index, char = found
    return f"U+{ord(char):04X} ({unicodedata.category(char)}) at character {index}"


def replace_unsafe(text: str, replace: Callable[[str], str]) -> str:
    """``text`` with each unsafe character ``c`` written as ``replace(c)``; the rest as it is."""
    if text.isprintable():  # no unsafe character is printable: the common case in one call
        return text
    return _NOT_PRINTABLE_ASCII.sub(
        lambda m: replace(m.group()) if unicodedata.category(m.group()) in UNSAFE_CATEGORIES else m.group(), text)
