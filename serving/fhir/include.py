"""``_include`` and ``_revinclude`` (FHIR R4 3.1.1.5.4, https://hl7.org/fhir/R4/search.html#include):
the resources a page's matches reference, or that reference them, added with ``search.mode``
``include``.

Served, as the resources medgate stores reference each other (:mod:`serving.fhir.report`,
:mod:`iomt.observations`):

* ``DiagnosticReport:result`` (the report's Observations); reversed on an Observation search, the
  reports that list the Observation;
* ``Observation:derived-from`` (a NEWS2 score's vital signs); reversed, the scores derived from the
  Observation.  An imaging Observation derives from its ImagingStudy by a logical reference
  (identifier only), which no include can follow, and no R4 Observation may derive from a
  DiagnosticReport (``Observation.derivedFrom`` does not allow that type);
* ``<type>:subject`` and ``<type>:patient`` (the Patient) of Observation, DiagnosticReport,
  RiskAssessment and Flag; reversed on a Patient search, that type's resources about the patient;
* ``Observation:device`` (the AI algorithm's Device).

Includes are not iterated (``:iterate`` is not supported); ``*`` is not supported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

#: References of a subject: R4 ``subject``/``patient`` search parameters on the types served.
_SUBJECT_TYPES = ("Observation", "DiagnosticReport", "RiskAssessment", "Flag")


@dataclass(frozen=True)
class Include:
    """The R4 search parameter ``name`` of ``source``: element ``element`` references ``target``."""

    source: str
    name: str
    element: str
    target: str
    reversible: bool = True

    @property
    def value(self) -> str:
        """As ``_include``/``_revinclude`` writes it: ``Source:name:Target``."""
        return f"{self.source}:{self.name}:{self.target}"

    def references(self, resource: dict) -> list[str]:
        """The ``Target/id`` references of ``resource``'s element (0..1 or 0..*)."""
        element = resource.get(self.element)
        refs = element if isinstance(element, list) else [element] if element else []
        return [r["reference"] for r in refs if str(r.get("reference", "")).startswith(self.target + "/")]


INCLUDES: dict[tuple[str, str], Include] = {
    ("DiagnosticReport", "result"): Include("DiagnosticReport", "result", "result", "Observation"),
    ("Observation", "derived-from"): Include("Observation", "derived-from", "derivedFrom", "Observation"),
    ("Observation", "device"): Include("Observation", "device", "device", "Device", reversible=False),
    **{(source, name): Include(source, name, "subject", "Patient")
       for source in _SUBJECT_TYPES for name in ("subject", "patient")},
}
#: ``_revinclude`` values served, by the type searched.
REVINCLUDES: dict[str, list[str]] = {}
for _include in INCLUDES.values():
    if _include.reversible:
        REVINCLUDES.setdefault(_include.target, []).append(f"{_include.source}:{_include.name}")


def parse_include(resource_type: str, value: str, reverse: bool) -> Include | None:
    """The :class:`Include` of ``_include=value`` (``_revinclude`` when ``reverse``) on a search of
    ``resource_type``; None when it is not served."""
    parts = value.split(":")
    if len(parts) not in (2, 3):
        return None
    found = INCLUDES.get((parts[0], parts[1]))
    if found is None or (len(parts) == 3 and parts[2] != found.target):
        return None
    if reverse:
        return found if found.reversible and found.target == resource_type else None
    return found if found.source == resource_type else None


Read = Callable[[str, str], "dict | None"]
Referencing = Callable[[Include, list[str]], list[dict]]


def included(matched: list[dict], includes: Iterable[Include], revincludes: Iterable[Include],
             read: Read, referencing: Referencing) -> list[dict]:
    """The resources ``includes`` reach from ``matched`` and those ``revincludes`` find pointing at
    them, each once and none of ``matched``.  ``read(type, id)`` reads one resource (None when
    unknown); ``referencing(include, refs)`` finds the resources of ``include.source`` whose
    element holds one of ``refs``."""
    seen = {(r["resourceType"], r["id"]) for r in matched}
    out: list[dict] = []

    def add(resource: dict | None) -> None:
        if resource is not None and (resource["resourceType"], resource["id"]) not in seen:
            seen.add((resource["resourceType"], resource["id"]))
            out.append(resource)

    for include in includes:
        for ref in dict.fromkeys(ref for r in matched for ref in include.references(r)):
            add(read(*ref.split("/", 1)))
    for include in revincludes:
        refs = [f"{r['resourceType']}/{r['id']}" for r in matched]
        for resource in referencing(include, refs):
            add(resource)
    return out
