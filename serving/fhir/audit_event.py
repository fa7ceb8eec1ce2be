"""Audit rows as FHIR R4 AuditEvent resources (read-only view of ``audit_log``).

Mapping: ``type`` DCM 110110 "Patient Record" (reads) or DCM 110106 "Export"; ``subtype`` the
FHIR restful interaction (read / search-type / operation); ``action`` R (read, stream, export) or E
(search, and execute: a model run on an upload, ``POST /v1/infer``);
``outcome`` 0 success, 4 minor failure (denied, not found), 8 serious failure (error); one
requesting ``agent`` (token name, role, network address); ``source`` medgate; one ``entity`` for
the resource read or the study exported, with the search query (base64) when there is one.  The
row's hash and sequence number travel as ``meta.tag`` so a copy can be checked against the chain.
"""
from __future__ import annotations

import base64
from typing import Any

DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
NETWORK_IP = "2"  # AuditEvent.agent.network.type: IP address
OUTCOME = {"success": "0", "denied": "4", "not-found": "4", "error": "8"}
HASH_TAG_SYSTEM = "urn:medgate:audit-hash"
#: The restful interaction (AuditEvent.subtype) of each audit action; others are reads.
INTERACTION = {"search": "search-type", "execute": "operation"}


def _event_type(action: str) -> dict[str, str]:
    if action == "export":
        return {"system": DCM, "code": "110106", "display": "Export"}
    return {"system": DCM, "code": "110110", "display": "Patient Record"}


def audit_event(row: dict[str, Any]) -> dict[str, Any]:
    """The AuditEvent of one ``audit_log`` row."""
    action = row["action"]
    interaction = INTERACTION.get(action, "read")
    agent: dict[str, Any] = {"who": {"display": row["who"]}, "requestor": True}
    if row.get("role"):
        agent["role"] = [{"text": row["role"]}]
    if row.get("client"):
        agent["network"] = {"address": row["client"], "type": NETWORK_IP}
    entity: dict[str, Any] = {}
    if row.get("resource_type") and row.get("resource_id"):
        entity["what"] = {"reference": f"{row['resource_type']}/{row['resource_id']}"}
    elif row.get("study_uid"):
        entity["what"] = {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{row['study_uid']}"}}
    if row.get("resource_type") and not row.get("resource_id"):
        entity["description"] = row["resource_type"]
    if row.get("query"):
        entity["query"] = base64.b64encode(row["query"].encode("utf-8")).decode("ascii")
    if row.get("detail"):
        entity.setdefault("description", row["detail"])
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"audit-{row['seq']}",
        "meta": {"tag": [{"system": HASH_TAG_SYSTEM, "code": row["hash"], "display": f"seq {row['seq']}"}]},
        "type": _event_type(action),
        "subtype": [{"system": RESTFUL, "code": interaction}],
        "action": "E" if action in ("search", "execute") else "R",
        "recorded": row["recorded"],
        "outcome": OUTCOME.get(row["outcome"], "8"),
        "agent": [agent],
        "source": {"observer": {"display": "medgate"}},
    }
    if row["outcome"] != "success":
        event["outcomeDesc"] = row["outcome"] + (f": {row['detail']}" if row.get("detail") else "")
    if entity:
        event["entity"] = [entity]
    return event
