"""One CDS Hooks call, without HTTP: check the request, find the patient, read the store, make the cards.

:class:`CdsHooks` answers a hook request (CDS Hooks 2.0 "HTTP Request") of a client the caller
already trusts (:mod:`serving.cds.trust`) with ``{"cards": [...]}``; it refuses a malformed request
with :class:`HookRefused` (400 or 404, the reason naming what was given).  Whatever cannot be read
(the patient's identifiers, the store itself) becomes a card saying so, never an error: the EHR
shows the clinician what medgate could not check.  Each card issued is remembered
(:meth:`serving.feedback.service.FeedbackService.issue_cards`) so the EHR's feedback on it can be
filed under the model version it speaks for.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from serving.cds.cards import Card, cards_for
from serving.cds.discovery import REQUIRED_CONTEXT, SERVICES, CdsService
from serving.cds.patient_data import PatientData, patient_data
from serving.cds.prefetch import look_up_patient
from serving.cds.trust import CdsClient
from serving.feedback.records import Feedback
from serving.feedback.service import FHIR_ID, FeedbackService
from serving.feedback.store import IssuedCard

log = logging.getLogger("medgate.cds")

#: RFC 9110 statuses of a refused hook request.
BAD_REQUEST, NOT_FOUND = 400, 404


class HookRefused(Exception):
    """The request is not a valid hook call of this service: ``status`` and the reason (message)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def service_of(service_id: str) -> CdsService:
    service = SERVICES.get(service_id)
    if service is None:
        raise HookRefused(NOT_FOUND, f"no CDS Service {service_id[:80]!r}; offered: {sorted(SERVICES)}")
    return service


def checked_request(service: CdsService, body: Any) -> str:
    """The ``context.patientId`` of a valid hook request for ``service``.

    Raises
    ------
    HookRefused
        Not a JSON object; ``hook`` not the service's; no ``hookInstance``; a context field the
        hook requires missing; a ``patientId`` that is not a FHIR id.
    """
    if not isinstance(body, dict):
        raise HookRefused(BAD_REQUEST, f"the body must be a JSON object, {type(body).__name__} is given")
    if body.get("hook") != service.hook:
        raise HookRefused(BAD_REQUEST, f"service {service.id} answers hook {service.hook!r}, "
                                       f"{str(body.get('hook'))[:80]!r} is given")
    if not isinstance(body.get("hookInstance"), str) or not body["hookInstance"]:
        raise HookRefused(BAD_REQUEST, "hookInstance is required (CDS Hooks 2.0 HTTP Request)")
    context = body.get("context")
    if not isinstance(context, dict):
        raise HookRefused(BAD_REQUEST, f"context must be an object, {str(context)[:80]!r} is given")
    missing = [name for name in REQUIRED_CONTEXT[service.hook] if not context.get(name)]
    if missing:
        raise HookRefused(BAD_REQUEST, f"hook {service.hook} requires context {missing}; they are missing")
    patient_id = context["patientId"]
    if not isinstance(patient_id, str) or not FHIR_ID.match(patient_id):
        raise HookRefused(BAD_REQUEST, f"context.patientId must be a FHIR id ({FHIR_ID.pattern}), "
                                       f"{str(patient_id)[:80]!r} is given")
    return patient_id


class CdsHooks:
    """Hook calls over ``store`` (:class:`serving.store.Store`), feedback through ``feedback``.

    ``link_base``: ``http.public_base_url`` (the worklist links); ``smart_app_url`` and
    ``fhir_timeout_s``: the ``cds`` section's."""

    def __init__(self, store, feedback: FeedbackService, link_base: str, *, smart_app_url: str | None = None,
                 fhir_timeout_s: float = 5.0) -> None:
        self.store, self.feedback = store, feedback
        self.link_base, self.smart_app_url, self.fhir_timeout_s = link_base, smart_app_url, fhir_timeout_s

    def call(self, service_id: str, body: Any, client: CdsClient) -> dict[str, Any]:
        """The response ``{"cards": [...]}`` to one hook request (see the module docstring)."""
        service = service_of(service_id)
        patient_id = checked_request(service, body)
        lookup = look_up_patient(body, patient_id, self.fhir_timeout_s)
        unchecked = lookup.unchecked
        try:
            data = patient_data(self.store, lookup.references)
        except Exception as exc:  # noqa: BLE001 - the EHR gets a card saying what was not checked
            log.exception("CDS %s: the store could not be read for Patient/%s", service.id, patient_id)
            data = PatientData(lookup.references)
            unchecked += (f"medgate's store could not be read ({type(exc).__name__}): no vitals, alerts or "
                          f"imaging results were checked.",)
        cards = cards_for(data, unchecked, self.link_base, self.smart_app_url)
        self._remember(service, cards, lookup.references[0], client)
        return {"cards": [card.as_json() for card in cards]}

    def _remember(self, service: CdsService, cards: list[Card], patient: str, client: CdsClient) -> None:
        now = time.time()
        self.feedback.issue_cards(IssuedCard(c.uuid, service.id, patient, c.model, c.version, c.summary,
                                             client.iss, now) for c in cards)

    def record_feedback(self, service_id: str, body: Any, client: CdsClient) -> list[Feedback]:
        """CDS Hooks 2.0 Feedback on cards ``service_id`` issued (all stored, or none)."""
        service_of(service_id)
        who = client.iss if client.subject is None else f"{client.iss} ({client.subject})"
        return self.feedback.on_cards(who, service_id, body, client.iss)
