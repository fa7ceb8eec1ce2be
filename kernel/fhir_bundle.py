"""FHIR transaction Bundles whose ids are deterministic.

A batch of resources becomes one ``transaction`` Bundle (FHIR R4 http.html#transaction) of
``PUT {type}/{id}`` entries: every id is deterministic, so a Bundle delivered twice (an outbox
retry after a lost response) updates the same resources instead of creating new ones.  The
bridge (:mod:`iomt.sink`) and the imaging pipeline build them; :mod:`serving.delivery.fhir_sender` sends
them.
"""
from __future__ import annotations

import uuid
from typing import Any

BUNDLE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgate:fhir:bundle")


def transaction_bundle(resources: list[dict[str, Any]], base_url: str) -> dict[str, Any]:
    """A transaction Bundle that PUTs each resource at ``{type}/{id}``; its id is a UUID 5 of
    the entry keys, so the same resources always give the same Bundle id."""
    if not resources:
        raise ValueError("resources must hold at least one resource, an empty list is given.")
    base = base_url.rstrip("/")
    keys = [f"{r['resourceType']}/{r['id']}" for r in resources]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid5(BUNDLE_ID_NAMESPACE, "\n".join(keys))),
        "type": "transaction",
        "entry": [{"fullUrl": f"{base}/{key}", "resource": resource,
                   "request": {"method": "PUT", "url": key}}
                  for key, resource in zip(keys, resources)],
    }
