"""Clinician feedback on what medgate said: findings (agree / disagree with a reason), alerts
(helpful or not) and CDS Hooks cards (accepted / overridden), per model version, with who and when.

:mod:`serving.feedback.records` is the typed record, :mod:`serving.feedback.store` its table,
:mod:`serving.feedback.fhir` the FHIR Observation each becomes, :mod:`serving.feedback.service` the
checks (known target, allowed role) and :mod:`serving.feedback.api` the HTTP endpoints.
"""
