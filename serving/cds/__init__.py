"""CDS Hooks 2.0 service (https://cds-hooks.hl7.org/2.0/): discovery, ``patient-view`` and
``encounter-discharge`` cards from the vitals, alerts and imaging results medgate holds, and the
feedback endpoint.

:mod:`serving.cds.trust` checks the calling EHR's JWT, :mod:`serving.cds.discovery` declares the
services, :mod:`serving.cds.prefetch` finds the patient (prefetch, else the EHR's FHIR server),
:mod:`serving.cds.patient_data` reads the store, :mod:`serving.cds.cards` builds the cards,
:mod:`serving.cds.service` ties them together and :mod:`serving.cds.api` is the FastAPI router.
"""
