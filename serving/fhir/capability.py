"""The CapabilityStatement of medgate's read-only FHIR R4 API (``GET /fhir/metadata``) and the
SearchParameters it defines (``GET /fhir/SearchParameter/{id}``).

Every ``searchParam`` listed is one of :data:`serving.fhir.search.PARAMETERS`: an R4 search
parameter of that resource type by name and type (R4 search parameter registry), or one R4 does not
define, which then names in ``definition`` the SearchParameter served here (Flag ``status``).
Modifiers are no parameter names: ``patient:identifier`` is the R4 ``:identifier`` modifier of
the reference parameter ``patient``, stated in its documentation (an R4 CapabilityStatement has
no element for supported modifiers).  ``_count``, ``_offset``, ``_sort``, ``_total``, ``_summary``,
``_include``, ``_revinclude`` and ``_format`` are result parameters, not search parameters:
``rest.documentation`` describes them, and each type's ``searchInclude`` and ``searchRevInclude``
list the includes served (:mod:`serving.fhir.include`).

Every type is ``versioned`` (``meta.versionId`` and ``meta.lastUpdated`` on every resource) with
conditional reads (``If-None-Match`` on the ETag ``W/"<versionId>"``, ``If-Modified-Since`` on
``Last-Modified``) and no history.

Resource types read without search: Device (the AI algorithm of an imaging report's Observations,
:func:`serving.fhir.report.device_resource`).
"""
from __future__ import annotations

from typing import Any

from serving.fhir.include import INCLUDES, REVINCLUDES
from serving.fhir.search import DEFAULT_COUNT, MAX_COUNT, PARAMETERS, SORT_KEYS, TOTAL_MODES, Parameter

FHIR_VERSION = "4.0.1"
#: Types served by ``read`` only, with what the CapabilityStatement says of each.
READ_ONLY_TYPES: dict[str, str] = {
    "Device": "The AI algorithm (model name and version, manufacturer medgate) that made an imaging"
              " report's Observations (Observation.device); one per model version.",
}
#: What a reader must know of a type's content beyond its search parameters.
CONTENT_NOTES: dict[str, str] = {
    "Patient": "Patients known from admissions; a read also answers for a patient known only by reference"
               " (id only, no demographics are invented), which a search (over admitted patients) does not"
               " return.",
    "RiskAssessment": "prediction.probabilityDecimal is a probability as a decimal from 0 to 1 (0.8 means"
                      " 80 %), never a percentage, although the R4 comment on probability[x] speaks of"
                      " percentages; prediction.outcome is coded (SNOMED CT 271299001 \"Patient's condition"
                      " worsened\") and basis references the vital-sign Observations of the scored hour.",
}
RESULT_PARAMETERS_DOC = (
    f"Result parameters on every search: _count (page size, default {DEFAULT_COUNT}, at most {MAX_COUNT}),"
    " _offset (index of the first match of the page, as the Bundle's next and previous links write it),"
    f" _sort ({', '.join(sorted(SORT_KEYS))}; '-' descending; comma list; date on types with a date;"
    f" default newest first), _total ({' | '.join(sorted(TOTAL_MODES))}; none leaves Bundle.total out),"
    " _summary=count (the total alone), _include and _revinclude (each type's searchInclude and"
    " searchRevInclude; not iterated), _format (JSON only). Unknown parameters and unsupported _sort,"
    " _include, _revinclude or _summary values are ignored and named in an OperationOutcome entry"
    " (search.mode outcome), unless the request has 'Prefer: handling=strict' (then 400). An unsupported"
    " modifier, or a value that cannot be read, is refused with 400.")
#: R4 CapabilityStatement.rest.resource: versioned, conditional read by If-None-Match and If-Modified-Since.
VERSIONING, CONDITIONAL_READ = "versioned", "full-support"


def search_parameter_url(base_url: str, definition: str) -> str:
    """Canonical URL of a SearchParameter medgate defines: where this server publishes it."""
    return f"{base_url}/SearchParameter/{definition}"


def _defined() -> dict[str, tuple[str, Parameter]]:
    """SearchParameters medgate defines, by id: (resource type, parameter)."""
    return {p.definition: (rtype, p) for rtype, params in PARAMETERS.items()
            for p in params.values() if p.definition}


def search_parameter(definition: str, base_url: str) -> dict[str, Any] | None:
    """The R4 SearchParameter resource ``definition`` (e.g. ``Flag-status``), or None if medgate
    defines none by that id."""
    found = _defined().get(definition)
    if found is None:
        return None
    rtype, param = found
    return {
        "resourceType": "SearchParameter",
        "id": definition,
        "url": search_parameter_url(base_url, definition),
        "name": definition.replace("-", ""),
        "status": "active",
        "experimental": False,
        "publisher": "medgate",
        "description": f"{rtype} {param.name}: {param.documentation} (R4 defines no search parameter on"
                       f" {param.expression}; medgate defines this one).",
        "code": param.name,
        "base": [rtype],
        "type": param.type,
        "expression": param.expression,
        "multipleOr": True,
    }


def _search_param(param: Parameter, base_url: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": param.name, "type": param.type}
    if param.definition:
        entry["definition"] = search_parameter_url(base_url, param.definition)
    if param.documentation:
        entry["documentation"] = param.documentation
    return entry


def _resource(rtype: str, base_url: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": rtype, "versioning": VERSIONING, "readHistory": False,
                             "conditionalRead": CONDITIONAL_READ}
    if rtype in PARAMETERS:
        entry["interaction"] = [{"code": "read"}, {"code": "search-type"}]
        entry["searchInclude"] = sorted(f"{i.source}:{i.name}" for i in INCLUDES.values() if i.source == rtype)
        entry["searchRevInclude"] = sorted(REVINCLUDES.get(rtype, []))
        entry["searchParam"] = [_search_param(p, base_url) for _, p in sorted(PARAMETERS[rtype].items())]
        entry = {k: v for k, v in entry.items() if v != []}
    else:
        entry["interaction"] = [{"code": "read"}]
    documentation = " ".join(filter(None, (READ_ONLY_TYPES.get(rtype), CONTENT_NOTES.get(rtype))))
    if documentation:
        entry["documentation"] = documentation
    return entry


def capability_statement(base_url: str, software_version: str, *, date: str) -> dict[str, Any]:
    """A CapabilityStatement (kind ``instance``) for the server at ``base_url``."""
    resources = [_resource(rtype, base_url) for rtype in sorted({*PARAMETERS, *READ_ONLY_TYPES})]
    resources.append({"type": "SearchParameter", "interaction": [{"code": "read"}],
                      "documentation": "The search parameters medgate defines where R4 has none: "
                                       + ", ".join(sorted(_defined())) + "."})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "medgate",
        "kind": "instance",
        "software": {"name": "medgate", "version": software_version},
        "implementation": {"description": "medgate read-only FHIR API (results are NOT FOR CLINICAL USE)",
                           "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": RESULT_PARAMETERS_DOC,
            "security": {
                "cors": False,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "OAuth", "display": "OAuth"}],
                             "text": "Bearer tokens (static, OIDC-ready); roles clinician, engineer, admin"}],
                "description": "Every request needs a bearer token; see docs/security.md for the role matrix.",
            },
            "resource": resources,
        }],
    }
