"""FHIR R4 search over the local store: parameters, matching, searchset Bundles with paging.

Supported per type (anything else is refused with 400 and an OperationOutcome, as a server does
with ``Prefer: handling=strict``); every name is an R4 search parameter of that type except
Flag ``status``, which medgate defines in a SearchParameter it serves (:data:`PARAMETERS`,
:mod:`serving.fhir.capability`):

* every type: ``_id``; result parameters ``_count`` (default 50, at most 500), ``_offset`` (index of
  the first match of a page, as the Bundle's next/previous links write it) and ``_format``;
* Observation: ``patient``/``subject``, ``code``, ``category``, ``date``, ``status``;
* DiagnosticReport: ``patient``/``subject``, ``code``, ``category``, ``date``, ``status``;
* RiskAssessment: ``patient``/``subject``, ``date``;  Flag: ``patient``/``subject``, ``date``, ``status``;
* AuditEvent: ``date``, ``agent-name``, ``entity-type``, ``outcome``.

``patient`` takes ``id`` or ``Patient/id``; with the R4 reference modifier ``:identifier``
(``patient:identifier=system|value``, R4 3.1.1.4.9) it matches the subject's logical identifier
instead.  Tokens take ``code`` or ``system|code``, comma-separated alternatives (on elements of
type ``code``, such as ``status``, only the code is compared).  ``date`` takes the prefixes eq, ge,
gt, le, lt and partial dates; a date without a time zone is read as UTC.  ``agent-name`` is an R4
string: it matches a name that starts with the value, ignoring case (``:contains`` anywhere,
``:exact`` the whole name).  ``entity-type`` takes a resource type (system
``http://hl7.org/fhir/resource-types``) and matches the entity's ``type`` or the type of the
resource it references.  Results are newest first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import urlencode

DEFAULT_COUNT, MAX_COUNT = 50, 500
#: R4 3.1.1.5-3.1.1.6 result parameters (``_offset``: medgate's paging position); not search parameters.
RESULT_PARAMETERS = frozenset({"_count", "_offset", "_format"})
#: R4 resource-types code system (AuditEvent ``entity-type`` values).
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"


@dataclass(frozen=True)
class Parameter:
    """One search parameter a resource type supports here.

    ``name`` and ``type`` (R4 SearchParamType) as the R4 registry defines them; ``modifiers`` the
    R4 modifiers accepted after ``name:``.  For a parameter R4 does not define, ``definition`` is
    the id of the SearchParameter medgate serves for it and ``expression`` its FHIRPath (None for
    R4's own).
    """

    name: str
    type: str
    documentation: str | None = None
    modifiers: frozenset[str] = frozenset()
    definition: str | None = None
    expression: str | None = None


ID = Parameter("_id", "token", "logical id; comma-separated alternatives")
_BY_IDENTIFIER = "; :identifier takes system|value of the subject's identifier (R4 reference modifier)"
PATIENT = Parameter("patient", "reference", "id or Patient/id" + _BY_IDENTIFIER, frozenset({"identifier"}))
SUBJECT = Parameter("subject", "reference", "Type/id, or id of a Patient" + _BY_IDENTIFIER, frozenset({"identifier"}))
DATE = Parameter("date", "date", "eq, ge, gt, le, lt prefixes; partial dates; no zone = UTC")
CODE = Parameter("code", "token", "code or system|code, comma-separated alternatives")
CATEGORY = Parameter("category", "token", "code or system|code, comma-separated alternatives")
STATUS = Parameter("status", "token", "status code, comma-separated alternatives")
#: R4 defines no search parameter on Flag.status: medgate's SearchParameter ``Flag-status`` does.
FLAG_STATUS = Parameter("status", "token", "active | inactive | entered-in-error, comma-separated alternatives",
                        definition="Flag-status", expression="Flag.status")


def _params(*params: Parameter) -> dict[str, Parameter]:
    return {p.name: p for p in (ID, *params)}


PARAMETERS: dict[str, dict[str, Parameter]] = {
    "Observation": _params(PATIENT, SUBJECT, CODE, CATEGORY, DATE, STATUS),
    "DiagnosticReport": _params(PATIENT, SUBJECT, CODE, CATEGORY, DATE, STATUS),
    "RiskAssessment": _params(PATIENT, SUBJECT, DATE),
    "Flag": _params(PATIENT, SUBJECT, DATE, FLAG_STATUS),
    "AuditEvent": _params(
        Parameter("date", "date", "when recorded; " + DATE.documentation),
        Parameter("agent-name", "string", "start of the requesting user's name, any case; :contains, :exact",
                  frozenset({"contains", "exact"})),
        Parameter("entity-type", "token", "resource type of the entity read or searched (resource-types)"),
        Parameter("outcome", "token", "0 success, 4 denied or not found, 8 error")),
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
    for key, value in items:
        if key == "_count":
            search.count = _int(key, value, 0, MAX_COUNT)
        elif key == "_offset":
            search.offset = _int(key, value, 0, 10**9)
        elif key != "_format":
            _add(search, _parameter(resource_type, allowed, key), key.partition(":")[2], value)
    return search


def _parameter(resource_type: str, allowed: dict[str, Parameter], key: str) -> Parameter:
    name, colon, modifier = key.partition(":")
    param = allowed.get(name)
    if param is None:
        raise SearchError(f"parameter {name!r} is not supported on {resource_type}; "
                          f"supported: {sorted(allowed) + sorted(RESULT_PARAMETERS)}")
    if colon and modifier not in param.modifiers:
        raise SearchError(f"modifier {':' + modifier!r} is not supported on {resource_type} {name}; "
                          f"supported: {sorted(':' + m for m in param.modifiers) or 'none'}")
    return param


def _add(search: Search, param: Parameter, modifier: str, value: str) -> None:
    """Add the filter of one ``param[:modifier]=value`` to ``search``."""
    name, when = param.name, DATE_PATH[search.resource_type]
    if name in ("patient", "subject") and modifier == "identifier":
        system, _, code = value.rpartition("|")
        search.filters.append(_identifier_filter(system or None, code))
    elif name in ("patient", "subject"):
        search.subject = value if "/" in value else f"Patient/{value}"
    elif name == "_id":
        ids = set(value.split(","))
        search.filters.append(lambda r: r.get("id") in ids)
    elif name in ("code", "category"):
        wanted = _tokens(value)
        search.filters.append(lambda r: _coding_match(_concepts(r.get(name)), wanted))
    elif name in ("status", "outcome"):
        codes = {code for _, code in _tokens(value)}
        search.filters.append(lambda r: r.get(name) in codes)
    elif name == "date":
        test = date_test(value)
        search.filters.append(lambda r: _date_ok(when(r), test))
    elif name == "agent-name":
        search.filters.append(_string_filter(value, modifier))
    elif name == "entity-type":
        wanted = {code for system, code in _tokens(value) if system in (None, RESOURCE_TYPES)}
        search.filters.append(lambda r: any(_entity_types(e) & wanted for e in r.get("entity", [])))


def _concepts(element: Any) -> list[dict]:
    """A CodeableConcept element (0..1 or 0..*) as a list."""
    return element if isinstance(element, list) else [element] if element else []


def _string_filter(value: str, modifier: str) -> Callable[[dict], bool]:
    """R4 string search on AuditEvent agents' names (``agent.name``, else ``agent.who.display``)."""
    wanted = value.casefold()

    def match(resource: dict) -> bool:
        for agent in resource.get("agent", []):
            name = (agent.get("name") or (agent.get("who") or {}).get("display") or "").casefold()
            if (wanted in name if modifier == "contains" else name == wanted if modifier == "exact"
                    else name.startswith(wanted)):
                return True
        return False
    return match


def _entity_types(entity: dict) -> set[str]:
    """Resource types an AuditEvent entity names: its ``type`` coding and its reference's type."""
    kinds = {(entity.get("type") or {}).get("code")}
    reference = (entity.get("what") or {}).get("reference") or ""
    if "/" in reference:
        kinds.add(reference.split("/", 1)[0])
    elif entity.get("description"):
        kinds.add(entity["description"])
    return kinds - {None}


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
