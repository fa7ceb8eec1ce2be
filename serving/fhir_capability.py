"""The CapabilityStatement of medgate's read-only FHIR R4 API (``GET /fhir/metadata``)."""
from __future__ import annotations

from typing import Any

from serving.fhir_search import PARAMETERS

FHIR_VERSION = "4.0.1"
_TYPES = {"string": ("patient:identifier", "subject:identifier", "agent-name"),
          "date": ("date",), "number": ("_count", "_offset")}
_DOCS = {"patient": "Patient/id or id", "subject": "a reference",
         "patient:identifier": "system|value of a logical (identifier) subject reference",
         "subject:identifier": "system|value of a logical (identifier) subject reference",
         "date": "eq, ge, gt, le, lt prefixes; partial dates; no zone = UTC",
         "_count": "page size, at most 500", "_offset": "index of the first match of the page"}


def _param_type(name: str) -> str:
    for kind, names in _TYPES.items():
        if name in names:
            return kind
    return "reference" if name in ("patient", "subject") else "token"


def capability_statement(base_url: str, software_version: str, *, date: str) -> dict[str, Any]:
    """A CapabilityStatement (kind ``instance``) for the server at ``base_url``."""
    resources = []
    for rtype, params in sorted(PARAMETERS.items()):
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [
                {"name": p, "type": _param_type(p), **({"documentation": _DOCS[p]} if p in _DOCS else {})}
                for p in sorted(params) if p not in ("_format",)],
        }
        resources.append(entry)
    resources.append({"type": "Patient", "interaction": [{"code": "read"}],
                      "documentation": "Patients known from admissions, or only by reference (id only;"
                                       " no demographics are invented)."})
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
