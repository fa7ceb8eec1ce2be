"""The outbox sender that POSTs FHIR transaction Bundles (:mod:`kernel.fhir_bundle`; urllib, no
extra dependency).

Failures raise typed delivery errors (:mod:`kernel.delivery_errors`): a 4xx other than 408 and 429
(RFC 9110 15.5) is the server refusing this Bundle, a :class:`PermanentDeliveryError` carrying its
OperationOutcome's diagnostics, and the outbox dead-letters it at once; a 5xx, 408, 429 (with its
Retry-After, RFC 9110 10.2.3), a refused connection or a timeout is a
:class:`TransientDeliveryError`, retried with backoff (serving.delivery.outbox).  A transaction-response
entry whose status is not 2xx is classified the same way.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from typing import Any

from kernel.delivery_errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError

FHIR_JSON = "application/fhir+json"  # FHIR R4 http.html#mime-type
DEFAULT_TIMEOUT_S = 30.0
#: 4xx statuses that say "not now" rather than "not this": 408 Request Timeout (RFC 9110 15.5.9),
#: 429 Too Many Requests (RFC 6585 4).
TRANSIENT_CLIENT_ERRORS = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS})
#: Bytes of an error body read for its reason.
MAX_ERROR_BODY_BYTES = 4096


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
            try:
                detail = outcome_text(exc.read(MAX_ERROR_BODY_BYTES))
            except (OSError, http.client.HTTPException):
                detail = ""
            raise http_failure(url, exc.code, detail, retry_after_s(exc.headers.get("Retry-After"))) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise TransientDeliveryError(f"FHIR server {url} not reachable: {exc}") from None
        try:
            reply = json.loads(body) if body else {}
        except ValueError:
            raise TransientDeliveryError(f"FHIR server {url} answered with non-JSON: {body[:100]!r}") from None
        for entry in reply.get("entry", []):
            response = entry.get("response") or {}
            status = str(response.get("status", ""))
            if status and not status.startswith("2"):
                code = status.split(" ", 1)[0]
                detail = outcome_text(json.dumps(response.get("outcome") or {}))
                raise http_failure(url, int(code) if code.isdigit() else 0, detail or status,
                                   entry_of="an entry")


def http_failure(url: str, status: int, detail: str, retry_after: float | None = None,
                 entry_of: str = "") -> DeliveryError:
    """The delivery error for an HTTP ``status`` from the FHIR server at ``url``: permanent for a
    4xx other than :data:`TRANSIENT_CLIENT_ERRORS`, transient otherwise."""
    try:
        phrase = f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        phrase = str(status)
    what = f"FHIR server {url} answered {phrase}" + (f" for {entry_of}" if entry_of else "")
    reason = f"{what}: {detail}" if detail else what
    if 400 <= status < 500 and status not in TRANSIENT_CLIENT_ERRORS:
        return PermanentDeliveryError(reason)
    return TransientDeliveryError(reason, retry_after)


def outcome_text(body: bytes | str) -> str:
    """The reason in an error body: the OperationOutcome's issues (severity, code, diagnostics or
    details.text; FHIR R4 operationoutcome.html), or the body's own text."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        outcome = json.loads(text)
    except ValueError:
        return text.strip()
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return text.strip() if outcome else ""
    issues = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        said = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
        issues.append(" ".join(str(part) for part in (issue.get("severity"), issue.get("code"), said) if part))
    return "; ".join(issues) or "OperationOutcome without issues"


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 10.2.3);
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo else None
