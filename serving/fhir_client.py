"""FHIR transaction Bundles and the outbox sender that POSTs them (urllib, no extra dependency).

A batch of resources becomes one ``transaction`` Bundle (FHIR R4 http.html#transaction) of
``PUT {type}/{id}`` entries: every id is deterministic, so a Bundle delivered twice (an outbox
retry after a lost response) updates the same resources instead of creating new ones. Failures
raise, and the outbox retries with backoff (serving.outbox).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

FHIR_JSON = "application/fhir+json"  # FHIR R4 http.html#mime-type
BUNDLE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medgate:fhir:bundle")
DEFAULT_TIMEOUT_S = 30.0


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


class FhirSender:
    """Outbox sender of kind ``fhir``: POST a transaction Bundle to the server base URL."""

    def __init__(self, base_url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, {base_url!r} is given.")
        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s

    def __call__(self, destination: str, bundle: dict[str, Any]) -> None:
        url = destination.rstrip("/") if destination else self.base_url
        request = urllib.request.Request(url, data=json.dumps(bundle).encode("utf-8"), method="POST",
                                         headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise ConnectionError(f"FHIR server {url} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"FHIR server {url} not reachable: {exc}") from None
        try:
            reply = json.loads(body) if body else {}
        except ValueError:
            raise ConnectionError(f"FHIR server {url} answered with non-JSON: {body[:100]!r}") from None
        for entry in reply.get("entry", []):
            status = str((entry.get("response") or {}).get("status", ""))
            if status and not status.startswith("2"):
                raise ConnectionError(f"FHIR server {url} rejected an entry: {status}")
