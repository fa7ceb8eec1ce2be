"""FHIR R4 search over the local store: parameters, matching, searchset Bundles with paging.

Supported per type (anything else is refused with 400 and an OperationOutcome, as a server does
with ``Prefer: handling=strict``):

* every type: ``_id``, ``_count`` (default 50, at most 500), ``_offset``, ``_format``;
* Observation: ``patient``/``subject``, ``code``, ``category``, ``date``, ``status``;
* DiagnosticReport: ``patient``/``subject``, ``code``, ``date``, ``status``;
* RiskAssessment: ``patient``/``subject``, ``date``;  Flag: ``patient``/``subject``, ``date``, ``status``;
* AuditEvent: ``date``, ``agent-name``, ``entity-type``, ``outcome``.

``patient`` takes ``id`` or ``Patient/id``; ``patient:identifier`` / ``subject:identifier`` take
``system|value`` and match the logical references of imaging reports.  Tokens take ``code`` or
``system|code``, comma-separated alternatives.  ``date`` takes the prefixes eq, ge, gt, le, lt and
partial dates; a date without a time zone is read as UTC.  Results are newest first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import urlencode

DEFAULT_COUNT, MAX_COUNT = 50, 500
COMMON = {"_id", "_count", "_offset", "_format"}
SUBJECT = {"patient", "subject", "patient:identifier", "subject:identifier"}
PARAMETERS: dict[str, set[str]] = {
    "Observation": COMMON | SUBJECT | {"code", "category", "date", "status"},
    "DiagnosticReport": COMMON | SUBJECT | {"code", "date", "status"},
    "RiskAssessment": COMMON | SUBJECT | {"date"},
    "Flag": COMMON | SUBJECT | {"date", "status"},
    "AuditEvent": COMMON | {"date", "agent-name", "entity-type", "outcome"},
}
DATE_PATH: dict[str, Callable[[dict], str | None]] = {
    "Observation": lambda r: r.get("effectiveDateTime") or r.get("issued"),
    "DiagnosticReport": lambda r: r.get("effectiveDateTime") or r.get("issued"),
    "RiskAssessment": lambda r: r.get("occurrenceDateTime"),
    "Flag": lambda r: (r.get("period") or {}).get("start"),
    "AuditEvent": lambda r: r.get("recorded"),
}
_PREFIXES = ("eq", "ge", "gt", "le", "lt")


class SearchError(ValueError):
    """A search the server cannot run; the message goes into an OperationOutcome (400)."""


def operation_outcome(message: str, code: str = "invalid") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}]}


def parse_instant(value: str) -> datetime:
    """A FHIR dateTime/instant as an aware UTC datetime (no zone = UTC)."""
    text = value.strip().replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def date_range(value: str) -> tuple[datetime, datetime]:
    """The [start, end) a partial date or dateTime stands for."""
    try:
        if len(value) == 4:
            start = datetime(int(value), 1, 1, tzinfo=timezone.utc)
            return start, start.replace(year=start.year + 1)
        if len(value) == 7:
            start = datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=timezone.utc)
            end = (start + timedelta(days=32)).replace(day=1)
            return start, end
        if len(value) == 10:
            start = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
            return start, start + timedelta(days=1)
        start = parse_instant(value)
        return start, start + timedelta(seconds=1)
    except (ValueError, OverflowError):  # OverflowError: the range ends after year 9999
        raise SearchError(f"date: {value!r} is not a FHIR date or dateTime before 9999-12-31") from None


@dataclass
class DateTest:
    prefix: str
    start: datetime
    end: datetime

    def matches(self, t: datetime) -> bool:
        return {"eq": self.start <= t < self.end, "ge": t >= self.start, "gt": t >= self.end,
                "le": t < self.end, "lt": t < self.start}[self.prefix]


def date_test(value: str) -> DateTest:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    return DateTest(prefix, *date_range(value[2:] if value[:2] in _PREFIXES else value))


@dataclass
class Search:
    """A parsed search on ``resource_type``; see the module docstring."""

    resource_type: str
    subject: str | None = None
    subject_identifier: tuple[str | None, str] | None = None
    filters: list[Callable[[dict], bool]] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    params: list[tuple[str, str]] = field(default_factory=list)

    def matches(self, resource: dict[str, Any]) -> bool:
        return all(f(resource) for f in self.filters)


def _tokens(value: str) -> list[tuple[str | None, str]]:
    out = []
    for part in value.split(","):
        system, bar, code = part.rpartition("|")
        out.append((system if bar else None, code))
    return out


def _coding_match(concepts: list[dict], wanted: list[tuple[str | None, str]]) -> bool:
    codings = [c for concept in concepts for c in (concept or {}).get("coding", [])]
    return any(c.get("code") == code and (system is None or c.get("system") == system)
               for c in codings for system, code in wanted)


def parse_search(resource_type: str, items: list[tuple[str, str]]) -> Search:
    """Parse the query items of a search on ``resource_type``; raises :class:`SearchError`."""
    allowed = PARAMETERS.get(resource_type)
    if allowed is None:
        raise SearchError(f"resource type {resource_type!r} is not searchable here")
    search = Search(resource_type, params=[(k, v) for k, v in items if k not in ("_count", "_offset")])
    when = DATE_PATH[resource_type]
    for key, value in items:
        if key not in allowed:
            raise SearchError(f"parameter {key!r} is not supported on {resource_type}; "
                              f"supported: {sorted(allowed)}")
        if key == "_count":
            search.count = _int(key, value, 0, MAX_COUNT)
        elif key == "_offset":
            search.offset = _int(key, value, 0, 10**9)
        elif key in ("patient", "subject"):
            search.subject = value if "/" in value else f"Patient/{value}"
        elif key in ("patient:identifier", "subject:identifier"):
            system, _, code = value.rpartition("|")
            search.subject_identifier = (system or None, code)
            search.filters.append(_identifier_filter(system or None, code))
        elif key == "_id":
            ids = set(value.split(","))
            search.filters.append(lambda r, ids=ids: r.get("id") in ids)
        elif key == "code":
            wanted = _tokens(value)
            search.filters.append(lambda r, w=wanted: _coding_match([r.get("code")], w))
        elif key == "category":
            wanted = _tokens(value)
            search.filters.append(lambda r, w=wanted: _coding_match(r.get("category", []), w))
        elif key in ("status", "outcome"):
            values = set(value.split(","))
            search.filters.append(lambda r, k=key, v=values: r.get(k) in v)
        elif key == "date":
            test = date_test(value)
            search.filters.append(lambda r, t=test: _date_ok(when(r), t))
        elif key == "agent-name":
            search.filters.append(lambda r, v=value.lower(): any(
                v in (a.get("who", {}).get("display", "").lower()) for a in r.get("agent", [])))
        elif key == "entity-type":
            search.filters.append(lambda r, v=value: any(
                (e.get("what", {}).get("reference", "").startswith(v + "/") or e.get("description") == v)
                for e in r.get("entity", [])))
    return search


def _identifier_filter(system: str | None, value: str) -> Callable[[dict], bool]:
    def match(resource: dict) -> bool:
        ident = (resource.get("subject") or {}).get("identifier") or {}
        return ident.get("value") == value and (system is None or ident.get("system") == system)
    return match


def _date_ok(value: str | None, test: DateTest) -> bool:
    if not value:
        return False
    try:
        start, end = date_range(value)
    except SearchError:
        return False
    return test.matches(start)


def _int(key: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SearchError(f"{key} must be an integer, {value!r} is given") from None
    if not low <= number <= high:
        raise SearchError(f"{key} must be in [{low}, {high}], {number} is given")
    return number


def sort_newest_first(resources: list[dict], resource_type: str) -> list[dict]:
    when = DATE_PATH[resource_type]

    def key(r: dict) -> tuple[float, str]:
        try:
            return parse_instant(when(r) or "").timestamp(), r.get("id", "")
        except ValueError:
            return 0.0, r.get("id", "")
    return sorted(resources, key=key, reverse=True)


def searchset(search: Search, matched: list[dict], base_url: str, total: int | None = None) -> dict:
    """A searchset Bundle of ``matched`` (already paged) with self/next/previous links."""
    total = len(matched) if total is None else total
    path = f"{base_url}/{search.resource_type}"

    def link(relation: str, offset: int) -> dict[str, str]:
        query = urlencode([*search.params, ("_count", search.count), ("_offset", offset)])
        return {"relation": relation, "url": f"{path}?{query}"}

    links = [link("self", search.offset)]
    if search.offset + search.count < total:
        links.append(link("next", search.offset + search.count))
    if search.offset > 0:
        links.append(link("previous", max(search.offset - search.count, 0)))
    return {
        "resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
        "entry": [{"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": r,
                   "search": {"mode": "match"}} for r in matched],
    }
