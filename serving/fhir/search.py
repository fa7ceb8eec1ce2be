"""FHIR R4 search over the local store: parameters, matching, sorting, searchset Bundles with paging
(https://hl7.org/fhir/R4/search.html).

Supported per type (:data:`PARAMETERS`); every name is an R4 search parameter of that type except
Flag ``status``, which medgate defines in a SearchParameter it serves (:mod:`serving.fhir.capability`):

* every type: ``_id``, ``_lastUpdated`` (``meta.lastUpdated``, prefixes as ``date``);
* Observation: ``patient``/``subject``, ``code``, ``category``, ``date``, ``status``;
* DiagnosticReport: ``patient``/``subject``, ``code``, ``category``, ``date``, ``status``;
* RiskAssessment: ``patient``/``subject``, ``date``;  Flag: ``patient``/``subject``, ``date``, ``status``;
* Patient: ``identifier``;  AuditEvent: ``date``, ``agent-name``, ``entity-type``, ``outcome``.

Result parameters (R4 3.1.1.5-3.1.1.6, :data:`RESULT_PARAMETERS`): ``_count`` (default 50; a larger
page than 500 is cut to 500, as R4 lets a server do), ``_offset`` (index of the first match of a
page, as the Bundle's next/previous links write it), ``_sort`` (``date``, ``_lastUpdated``,
``_id``, ``-`` for descending, a comma list; without it newest first), ``_total``
(``none`` leaves ``Bundle.total`` out, ``estimate`` and ``accurate`` give the exact count),
``_summary=count`` (the total alone), ``_include`` and ``_revinclude`` (:mod:`serving.fhir.include`)
and ``_format``.

A parameter the server does not know, or a value of ``_sort``, ``_include``, ``_revinclude`` or
``_summary`` it does not support, is ignored (R4 3.1.1.2 "Handling Errors"): the Bundle's links
leave it out and an OperationOutcome entry (``search.mode`` ``outcome``) names it.  With
``Prefer: handling=strict`` the search is refused with 400 instead.  A supported parameter with a
modifier the server does not support, or with a value it cannot read, is always refused (R4
3.1.1.4: "Servers SHALL reject any search request that contains a search parameter with an
unsupported modifier").

``patient`` takes ``id`` or ``Patient/id``; with the R4 reference modifier ``:identifier``
(``patient:identifier=system|value``, R4 3.1.1.4.9) it matches the subject's logical identifier
instead.  Tokens (``code``, ``category``, ``identifier``) follow R4 token search (3.1.1.4.10):
``code`` in any system, ``system|code``, ``|code`` with no system, ``system|`` any code of the
system, comma-separated alternatives; on elements of type ``code`` (``status``) only the code is
compared.  ``date`` takes the prefixes eq, ge, gt, le, lt and partial dates; a date without a time
zone is read as UTC.  ``agent-name`` is an R4 string: it matches a name that starts with the value,
ignoring case (``:contains`` anywhere, ``:exact`` the whole name).  ``entity-type`` takes a
resource type (system ``http://hl7.org/fhir/resource-types``) and matches the entity's ``type`` or
the type of the resource it references.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import urlencode

from serving.fhir.include import Include, parse_include

DEFAULT_COUNT, MAX_COUNT = 50, 500
#: R4 3.1.1.5-3.1.1.6 result parameters (``_offset``: medgate's paging position); not search parameters.
RESULT_PARAMETERS = frozenset({"_count", "_offset", "_format", "_sort", "_total", "_summary", "_include",
                               "_revinclude"})
#: R4 3.1.1.5.6 ``_total`` values (http://hl7.org/fhir/R4/search.html#total).
TOTAL_MODES = frozenset({"none", "estimate", "accurate"})
#: R4 ``_summary`` values served: ``count`` (the total alone, no entries).
SUMMARY_COUNT = "count"
#: R4 resource-types code system (AuditEvent ``entity-type`` values).
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
#: R4 Bundle ``entry.search.mode`` codes (http://hl7.org/fhir/R4/valueset-search-entry-mode.html).
MATCH, INCLUDE, OUTCOME = "match", "include", "outcome"
#: The ``Prefer`` header's R4 handling preference (http://hl7.org/fhir/R4/search.html#errors).
STRICT = "handling=strict"


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
LAST_UPDATED = Parameter("_lastUpdated", "date", "meta.lastUpdated; eq, ge, gt, le, lt prefixes; partial dates")
_BY_IDENTIFIER = "; :identifier takes system|value of the subject's identifier (R4 reference modifier)"
PATIENT = Parameter("patient", "reference", "id or Patient/id" + _BY_IDENTIFIER, frozenset({"identifier"}))
SUBJECT = Parameter("subject", "reference", "Type/id, or id of a Patient" + _BY_IDENTIFIER, frozenset({"identifier"}))
DATE = Parameter("date", "date", "eq, ge, gt, le, lt prefixes; partial dates; no zone = UTC")
_TOKEN = "code, system|code, |code (no system) or system| (any code), comma-separated alternatives"
CODE = Parameter("code", "token", _TOKEN)
CATEGORY = Parameter("category", "token", _TOKEN)
STATUS = Parameter("status", "token", "status code, comma-separated alternatives")
IDENTIFIER = Parameter("identifier", "token", "Patient.identifier: value, system|value, |value or system|")
#: R4 defines no search parameter on Flag.status: medgate's SearchParameter ``Flag-status`` does.
FLAG_STATUS = Parameter("status", "token", "active | inactive | entered-in-error, comma-separated alternatives",
                        definition="Flag-status", expression="Flag.status")


def _params(*params: Parameter) -> dict[str, Parameter]:
    return {p.name: p for p in (ID, LAST_UPDATED, *params)}


PARAMETERS: dict[str, dict[str, Parameter]] = {
    "Observation": _params(PATIENT, SUBJECT, CODE, CATEGORY, DATE, STATUS),
    "DiagnosticReport": _params(PATIENT, SUBJECT, CODE, CATEGORY, DATE, STATUS),
    "RiskAssessment": _params(PATIENT, SUBJECT, DATE),
    "Flag": _params(PATIENT, SUBJECT, DATE, FLAG_STATUS),
    "Patient": _params(IDENTIFIER),
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


def _last_updated(resource: dict) -> str | None:
    return (resource.get("meta") or {}).get("lastUpdated")


def _id(resource: dict) -> str | None:
    return resource.get("id")


#: ``_sort`` keys (R4 3.1.1.5.2) -> the value sorted on, by resource type (None: not on that type).
SORT_KEYS: dict[str, Callable[[str], Callable[[dict], str | None] | None]] = {
    "date": DATE_PATH.get,
    "_lastUpdated": lambda _: _last_updated,
    "_id": lambda _: _id,
}
_PREFIXES = ("eq", "ge", "gt", "le", "lt")
#: A reference search value: ``[Type/]id``, the id an R4 ``id`` (http://hl7.org/fhir/R4/datatypes.html#id).
_REFERENCE = re.compile(r"(?:[A-Z][A-Za-z]{0,63}/)?[A-Za-z0-9\-.]{1,64}")


class SearchError(ValueError):
    """A search the server cannot run; the message goes into an OperationOutcome (400)."""


def operation_outcome(message: str, code: str = "invalid", severity: str = "error") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": message}]}


def strict_handling(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header value (e.g. ``return=minimal, handling=strict``) asks for strict
    handling of search parameters."""
    return any(part.strip().replace(" ", "") == STRICT for part in (prefer or "").split(","))


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
    """A parsed search on ``resource_type``; see the module docstring.

    ``params``: the parameters used, as the Bundle's links repeat them; ``ignored``: those the
    server ignored (``name=value``); ``total``: the ``_total`` mode; ``sort``: ``(key, descending)``
    pairs, empty for newest first; ``includes`` and ``revincludes``: :class:`Include` s to follow.
    """

    resource_type: str
    subject: str | None = None
    filters: list[Callable[[dict], bool]] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    params: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    total: str = "accurate"
    sort: list[tuple[str, bool]] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)

    def matches(self, resource: dict[str, Any]) -> bool:
        return all(f(resource) for f in self.filters)

    def order(self, resources: list[dict]) -> list[dict]:
        """``resources`` in the order of ``_sort`` (missing values last), else newest first."""
        if not self.sort:
            return sort_newest_first(resources, self.resource_type)
        ordered = list(resources)
        for key, descending in reversed(self.sort):  # stable sorts, the last key first
            value = SORT_KEYS[key](self.resource_type)
            present = [(_sortable(value(r), key != "_id"), r) for r in ordered]
            ordered = [r for k, r in sorted((p for p in present if p[0] is not None), key=lambda p: p[0],
                                            reverse=descending)] + [r for k, r in present if k is None]
        return ordered


def _sortable(value: str | None, is_date: bool) -> Any:
    """A date or dateTime as its instant (partial dates at their start; one that is none sorts
    first), any other value as is; None stays None."""
    if value is None or not is_date:
        return value
    try:
        return date_range(value)[0].timestamp(), value
    except SearchError:
        return float("-inf"), value


@dataclass(frozen=True)
class Token:
    """One R4 token alternative: ``system`` None = any system, "" = no system; ``code`` None = any."""

    system: str | None
    code: str | None

    def matches(self, system: str | None, code: str | None) -> bool:
        system_ok = self.system is None or (system or "") == self.system
        return system_ok and (self.code is None or code == self.code)


def tokens(value: str) -> list[Token]:
    """The comma-separated alternatives of an R4 token search value."""
    out = []
    for part in value.split(","):
        system, bar, code = part.rpartition("|")
        out.append(Token(system if bar else None, code if code or not bar else None))
    return out


def _coding_match(concepts: list[dict], wanted: list[Token]) -> bool:
    codings = [c for concept in concepts for c in (concept or {}).get("coding", [])]
    return any(t.matches(c.get("system"), c.get("code")) for c in codings for t in wanted)


def _identifier_match(identifiers: list[dict], wanted: list[Token]) -> bool:
    return any(t.matches(i.get("system"), i.get("value")) for i in identifiers for t in wanted)


def parse_search(resource_type: str, items: list[tuple[str, str]], strict: bool = False) -> Search:
    """Parse the query items of a search on ``resource_type``; raises :class:`SearchError`.

    Unknown parameters and unsupported values of the result parameters are ignored (listed in
    ``Search.ignored``) unless ``strict``; then they are refused, all named in one error."""
    allowed = PARAMETERS.get(resource_type)
    if allowed is None:
        raise SearchError(f"resource type {resource_type!r} is not searchable here")
    search = Search(resource_type)
    for key, value in items:
        if _result_parameter(search, key, value):
            continue
        name = key.partition(":")[0]
        if name in allowed:
            _add(search, _parameter(resource_type, allowed, key), key.partition(":")[2], value)
            search.params.append((key, value))
        else:
            search.ignored.append(f"{key}={value}")
    if search.ignored and strict:
        raise SearchError(f"not supported on {resource_type} (Prefer: handling=strict): {search.ignored}; "
                          f"supported: {sorted(allowed) + sorted(RESULT_PARAMETERS)}")
    return search


def _result_parameter(search: Search, key: str, value: str) -> bool:
    """Apply ``key=value`` if ``key`` is a result parameter; False when it is none."""
    if key == "_count":
        search.count = min(_int(key, value, 0, 10**9), MAX_COUNT)
    elif key == "_offset":
        search.offset = _int(key, value, 0, 10**9)
    elif key == "_total":
        if value not in TOTAL_MODES:
            raise SearchError(f"_total must be one of {sorted(TOTAL_MODES)}, {value!r} is given")
        search.total = value
        search.params.append((key, value))
    elif key == "_summary" and value == SUMMARY_COUNT:
        search.count = 0
        search.params.append((key, value))
    elif key == "_format":
        search.params.append((key, value))
    elif key == "_sort":
        _add_sort(search, value)
    elif key in ("_include", "_revinclude"):
        found = parse_include(search.resource_type, value, reverse=key == "_revinclude")
        if found is None:
            search.ignored.append(f"{key}={value}")
        else:
            (search.revincludes if key == "_revinclude" else search.includes).append(found)
            search.params.append((key, value))
    else:
        return False
    return True


def _add_sort(search: Search, value: str) -> None:
    used = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        key = part.removeprefix("-")
        if key in SORT_KEYS and SORT_KEYS[key](search.resource_type) is not None:
            search.sort.append((key, part.startswith("-")))
            used.append(part)
        else:
            search.ignored.append(f"_sort={part}")
    if used:
        search.params.append(("_sort", ",".join(used)))


def _parameter(resource_type: str, allowed: dict[str, Parameter], key: str) -> Parameter:
    name, colon, modifier = key.partition(":")
    param = allowed[name]
    if colon and modifier not in param.modifiers:
        raise SearchError(f"modifier {':' + modifier!r} is not supported on {resource_type} {name}; "
                          f"supported: {sorted(':' + m for m in param.modifiers) or 'none'}")
    return param


def _add(search: Search, param: Parameter, modifier: str, value: str) -> None:
    """Add the filter of one ``param[:modifier]=value`` to ``search``."""
    name = param.name
    if name in ("patient", "subject") and modifier == "identifier":
        wanted = tokens(value)
        search.filters.append(lambda r: _identifier_match(_concepts((r.get("subject") or {}).get("identifier")),
                                                          wanted))
    elif name in ("patient", "subject"):
        if not _REFERENCE.fullmatch(value):
            raise SearchError(f"{name}: {value[:80]!r} is not an id or Type/id (R4 id: [A-Za-z0-9-.]{{1,64}})")
        search.subject = value if "/" in value else f"Patient/{value}"
    elif name == "_id":
        ids = set(value.split(","))
        search.filters.append(lambda r: r.get("id") in ids)
    elif name in ("code", "category"):
        wanted = tokens(value)
        search.filters.append(lambda r: _coding_match(_concepts(r.get(name)), wanted))
    elif name == "identifier":
        wanted = tokens(value)
        search.filters.append(lambda r: _identifier_match(_concepts(r.get("identifier")), wanted))
    elif name in ("status", "outcome"):
        codes = {t.code for t in tokens(value)}
        search.filters.append(lambda r: r.get(name) in codes)
    elif name in ("date", "_lastUpdated"):
        test, when = date_test(value), DATE_PATH[search.resource_type] if name == "date" else _last_updated
        search.filters.append(lambda r: _date_ok(when(r), test))
    elif name == "agent-name":
        search.filters.append(_string_filter(value, modifier))
    elif name == "entity-type":
        wanted = {t.code for t in tokens(value) if t.system in (None, RESOURCE_TYPES)}
        search.filters.append(lambda r: any(_entity_types(e) & wanted for e in r.get("entity", [])))


def _concepts(element: Any) -> list[dict]:
    """An element of cardinality 0..1 or 0..* as a list."""
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
    """By the type's date (``meta.lastUpdated`` for a type without one), newest first, then by id."""
    when = DATE_PATH.get(resource_type, _last_updated)

    def key(r: dict) -> tuple[float, str]:
        try:
            return parse_instant(when(r) or "").timestamp(), r.get("id", "")
        except ValueError:
            return 0.0, r.get("id", "")
    return sorted(resources, key=key, reverse=True)


def searchset(search: Search, matched: list[dict], base_url: str, total: int | None = None,
              included: list[dict] | None = None) -> dict:
    """A searchset Bundle of ``matched`` (already paged) and ``included`` with self/next/previous
    links (the parameters used), and an OperationOutcome entry naming the ones ignored."""
    total = len(matched) if total is None else total
    path = f"{base_url}/{search.resource_type}"

    def link(relation: str, offset: int) -> dict[str, str]:
        query = urlencode([*search.params, ("_count", search.count), ("_offset", offset)])
        return {"relation": relation, "url": f"{path}?{query}"}

    def entry(resource: dict, mode: str) -> dict:
        return {"fullUrl": f"{base_url}/{resource['resourceType']}/{resource['id']}", "resource": resource,
                "search": {"mode": mode}}

    links = [link("self", search.offset)]
    if search.count and search.offset + search.count < total:
        links.append(link("next", search.offset + search.count))
    if search.offset > 0:
        links.append(link("previous", max(search.offset - search.count, 0)))
    entries = [entry(r, MATCH) for r in matched] + [entry(r, INCLUDE) for r in included or []]
    if search.ignored:
        entries.append({"resource": operation_outcome(f"ignored, not supported on {search.resource_type}: "
                                                      + ", ".join(search.ignored), "not-supported", "warning"),
                        "search": {"mode": OUTCOME}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if search.total != "none":
        bundle["total"] = total
    return {**bundle, "link": links, "entry": entries}
