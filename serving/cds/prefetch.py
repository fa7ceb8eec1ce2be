"""Who the patient is: from the prefetch, else from the EHR's FHIR server, else what could not be checked.

CDS Hooks 2.0 "Providing FHIR Resources to a CDS Service": the client may send the prefetch the
service declared; when it does not, the service may read the FHIR server ``fhirServer`` with the
access token of ``fhirAuthorization``.  medgate needs the patient's Patient resource: its
identifiers name the patient in medgate's store (:func:`iomt.identity.patient_reference`, as the
vitals bridge and the imaging reports form ``Patient/<id>``).  A read that fails, times out
(``timeout_s``) or is refused is not an error: :class:`PatientLookup` says what could not be
checked, and the cards say it too.  Redirects are not followed (a token goes only to ``fhirServer``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import requests

from iomt.identity import patient_reference
from serving.cds.discovery import PATIENT_PREFETCH

_FHIR_SERVER = re.compile(r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
FHIR_JSON = "application/fhir+json"
#: Largest Patient resource read from the EHR (bytes).
MAX_PATIENT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PatientLookup:
    """The patient as medgate can find it: ``references`` (``Patient/<id>``) to look up in the store,
    where the Patient came from (``prefetch``, ``fhir`` or None) and what could not be checked."""

    patient_id: str
    references: tuple[str, ...]
    source: str | None
    unchecked: tuple[str, ...] = field(default=())


def _references(patient_id: str, patient: dict[str, Any] | None) -> tuple[str, ...]:
    refs = [f"Patient/{patient_id}"]
    for identifier in (patient or {}).get("identifier") or []:
        value = identifier.get("value") if isinstance(identifier, dict) else None
        if isinstance(value, str) and value.strip():
            refs.append(patient_reference(value.strip(), identifier.get("system")))
    return tuple(dict.fromkeys(refs))


def _is_patient(resource: Any, patient_id: str) -> bool:
    return isinstance(resource, dict) and resource.get("resourceType") == "Patient" \
        and resource.get("id") in (None, patient_id)


def read_patient(fhir_server: str, authorization: Any, patient_id: str, timeout_s: float) -> dict[str, Any]:
    """``GET <fhirServer>/Patient/<id>`` with the access token of ``fhirAuthorization``.

    Raises
    ------
    LookupError
        The server is not an http(s) URL, no access token is given, the read failed, timed out,
        was refused or did not return that Patient; the message says which.
    """
    if not isinstance(fhir_server, str) or not _FHIR_SERVER.match(fhir_server):
        raise LookupError(f"fhirServer must be an http(s) URL, {str(fhir_server)[:120]!r} is given")
    token = authorization.get("access_token") if isinstance(authorization, dict) else None
    if not isinstance(token, str) or not token:
        raise LookupError("fhirAuthorization carries no access_token")
    kind = authorization.get("token_type") or "Bearer"
    url = f"{fhir_server.rstrip('/')}/Patient/{patient_id}"
    try:
        response = requests.get(url, headers={"Authorization": f"{kind} {token}", "Accept": FHIR_JSON},
                                timeout=timeout_s, allow_redirects=False, stream=True)
        with response:
            body = response.raw.read(MAX_PATIENT_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise LookupError(f"reading {url} failed: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise LookupError(f"{url} answered HTTP {response.status_code}")
    if len(body) > MAX_PATIENT_BYTES:
        raise LookupError(f"{url} answered more than {MAX_PATIENT_BYTES} bytes")
    try:
        patient = json.loads(body)
    except ValueError:
        raise LookupError(f"{url} did not answer JSON") from None
    if not _is_patient(patient, patient_id):
        raise LookupError(f"{url} did not answer Patient/{patient_id}")
    return patient


def look_up_patient(request: dict[str, Any], patient_id: str, timeout_s: float) -> PatientLookup:
    """The patient of a hook request whose ``context.patientId`` is ``patient_id`` (checked already)."""
    prefetched = (request.get("prefetch") or {}).get(PATIENT_PREFETCH) if isinstance(request.get("prefetch"), dict) \
        else None
    if _is_patient(prefetched, patient_id):
        return PatientLookup(patient_id, _references(patient_id, prefetched), "prefetch")
    why_not = "the prefetch held no Patient" if prefetched is None else "the prefetched Patient was not this patient"
    server = request.get("fhirServer")
    if server is None:
        reason = f"{why_not} and no fhirServer was given"
    else:
        try:
            patient = read_patient(server, request.get("fhirAuthorization"), patient_id, timeout_s)
            return PatientLookup(patient_id, _references(patient_id, patient), "fhir")
        except LookupError as exc:
            reason = f"{why_not}; {exc}"
    return PatientLookup(patient_id, _references(patient_id, None), None,
                         (f"The patient's identifiers (citizen ID, insurance number) could not be read: {reason}. "
                          f"Only data filed under Patient/{patient_id} was checked.",))
