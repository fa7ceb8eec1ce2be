"""DICOM UIDs where they name files: the UID grammar of PS3.5 9.1, and paths kept inside their folder.

A UID (PS3.5 9.1 "UID Encoding Rules") is ``<org root>.<suffix>``: numeric components separated by
single dots, each of one or more digits of the Basic G0 Set, the first digit of a component not
``0`` unless the component is the single digit ``0``, at most 64 characters including the dots
and the NULL (00H) padding of an odd length.  So at least two components, no empty component, no
sign, letters, slashes or ``..``.  A value that fits this grammar is a safe single path component;
every UID that becomes a folder or file name (spool, results, overlays) is checked here first,
and every such path is also resolved and checked to stay under its folder (:func:`inside`).
"""
from __future__ import annotations

import re
from pathlib import Path

#: PS3.5 9.1: the total length, including the NULL padding of an odd length.
MAX_UID_LENGTH = 64
#: PS3.5 9.1: one component is ``0`` or digits not starting with ``0``; a UID is two or more.
_COMPONENT = r"(?:0|[1-9][0-9]*)"
_GRAMMAR = re.compile(rf"{_COMPONENT}(?:\.{_COMPONENT})+")
#: PS3.5 6.2 (UI): trailing NULL padding to an even length; trailing spaces are tolerated too.
_PADDING = "\x00 "


class PathOutsideFolder(ValueError):
    """A path built from received values resolves outside the folder it must stay in."""


def is_uid(value: object) -> bool:
    """Whether ``value`` (its padding stripped) is a UID by PS3.5 9.1."""
    text = str(value).rstrip(_PADDING)
    return len(text) <= MAX_UID_LENGTH and _GRAMMAR.fullmatch(text) is not None


def check_uid(name: str, value: object) -> str:
    """``value`` without its padding if it is a UID by PS3.5 9.1, else :class:`ValueError`
    naming the attribute ``name`` and the value given."""
    text = str(value).rstrip(_PADDING)
    if not is_uid(text):
        raise ValueError(f"{name} must be a DICOM UID (PS3.5 9.1: components of digits without "
                         f"leading zeros, separated by single dots, at most {MAX_UID_LENGTH} "
                         f"characters), {str(value)[:80]!r} is given.")
    return text


def inside(base: str | Path, *parts: str) -> Path:
    """``base / parts...`` resolved (links followed), if it lies strictly under ``base`` resolved;
    else :class:`PathOutsideFolder` naming both.  Each part must be one plain name: empty, ``.``,
    ``..`` and names holding a separator are refused even when they would land inside."""
    root = Path(base).resolve()
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\\" in part or "\x00" in part:
            raise PathOutsideFolder(f"path parts must be plain names inside {root}, {part!r} is given")
    target = root.joinpath(*parts).resolve()
    if target == root or not target.is_relative_to(root):
        raise PathOutsideFolder(f"{'/'.join(parts)!r} resolves to {target}, outside {root}")
    return target
