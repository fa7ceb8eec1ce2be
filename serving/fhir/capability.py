"""The CapabilityStatement of medgate's read-only FHIR R4 API (``GET /fhir/metadata``) and the
SearchParameters it defines (``GET /fhir/SearchParameter/{id}``).

Every ``searchParam`` listed is one of :data:`serving.fhir.search.PARAMETERS`: an R4 search
parameter of that resource type by name and type (R4 search parameter registry), or one R4 does not
define, which then names in ``definition`` the SearchParameter served here (Flag ``status``).
Modifiers are no parameter names: ``patient:identifier`` is the R4 ``:identifier`` modifier of
the reference parameter ``patient``, stated in its documentation (an R4 CapabilityStatement has
no element for supported modifiers).  ``_count``, ``_offset`` and ``_format`` are result
parameters, not search parameters: ``rest.documentation`` describes them.

Resource types read without search: Patient (:mod:`serving.http.fhir_api`) and Device (the AI
algorithm of an imaging report's Observations, :func:`serving.fhir.report.device_resource`).
"""
from __future__ import annotations

from typing import Any

from serving.fhir.search import DEFAULT_COUNT, MAX_COUNT, PARAMETERS, Parameter

FHIR_VERSION = "4.0.1"
#: Types served by ``read`` only, with what the CapabilityStatement says of each.
READ_ONLY_TYPES: dict[str, str] = {
    "Patient": "Patients known from admissions, or only by reference (id only; no demographics are invented).",
    "Device": "The AI algorithm (model name and version, manufacturer medgate) that made an imaging"
              " report's Observations (Observation.device); one per model version.",
}
#: What a reader must know of a type's content beyond its search parameters.
CONTENT_NOTES: dict[str, str] = {
    "RiskAssessment": "prediction.probabilityDecimal is a probability as a decimal from 0 to 1 (0.8 means"
                      " 80 %), never a percentage, although the R4 comment on probability[x] speaks of"
                      " percentages; prediction.outcome is coded (SNOMED CT 271299001 \"Patient's condition"
                      " worsened\") and basis references the vital-sign Observations of the scored hour.",
}
RESULT_PARAMETERS_DOC = (f"Result parameters on every search: _count (page size, default {DEFAULT_COUNT}, at most"
                         f" {MAX_COUNT}), _offset (index of the first match of the page, as the Bundle's next and"
                         " previous links write it), _format (JSON only). Results are newest first.")


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
    entry: dict[str, Any] = {"type": rtype}
    if rtype in PARAMETERS:
        entry["interaction"] = [{"code": "read"}, {"code": "search-type"}]
        entry["searchParam"] = [_search_param(p, base_url) for _, p in sorted(PARAMETERS[rtype].items())]
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
