"""One patient's data as medgate's store holds it: an AI chest X-ray report (two tb findings, its SR
results row), NEWS2 scores, a deterioration RiskAssessment and an active alert (Flag)."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from iomt.identity import patient_reference
from models.finding import Concept, Finding, SourceImage
from serving.fhir.report import PatientIdentity, build_report_resources
from serving.imaging.results import summary_of
from training.synthetic.dicom import make_dx_dataset

TB = Concept("56717001", "SCT", "Tuberculosis")
PATIENT_ID = "079123456789"  # Patient ID (0010,0020), no issuer: the citizen ID system
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
PATIENT_REF = patient_reference(PATIENT_ID, CCCD)
NEWS2 = "1104051000000101"
FLAG_ID = "flag-open-1"
WHEN = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)


def news2(oid: str, when: str, total: int, band: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": PATIENT_REF},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": NEWS2}]}, "effectiveDateTime": when,
            "valueInteger": total, "interpretation": [{"text": f"NEWS2 clinical risk: {band}"}]}


def fill(store) -> dict:
    """Put the patient's data into ``store``; returns what the tests refer to."""
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16), patient_id=PATIENT_ID)
    image = SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, 32, 32)
    findings = [Finding(model="tb", model_version="1.0.0", code=TB, probability=p, threshold=0.5, source=image,
                        point=(3.0, 4.0) if i == 0 else None) for i, p in enumerate((0.85, 0.2))]
    identity = PatientIdentity(unqualified_system=CCCD)
    resources = build_report_resources(findings, ds, identity, sr_sop_instance_uid="1.2.3.4", issued=WHEN)
    store.put_resources(resources)
    store.add_instance({"sop_instance_uid": ds.SOPInstanceUID, "study_uid": ds.StudyInstanceUID,
                        "series_uid": ds.SeriesInstanceUID, "sop_class_uid": ds.SOPClassUID, "modality": "DX",
                        "path": "/nowhere/image.dcm", "calling_ae": "CXR_ROOM_1"})
    store.add_result(ds.StudyInstanceUID, "sr", f"/nowhere/{ds.StudyInstanceUID}/SR-1.2.3.4.dcm",
                     {"model": "tb", "version": "1.0.0", "sop_instance_uid": "1.2.3.4",
                      "findings": summary_of(findings)})
    store.put_resources([
        news2("n2-old", "2026-11-22T08:00:00+07:00", 4, "low-medium"),
        news2("n2-new", "2026-11-22T09:00:00+07:00", 7, "high"),
        {"resourceType": "RiskAssessment", "id": "ra-1", "status": "final", "subject": {"reference": PATIENT_REF},
         "occurrenceDateTime": "2026-11-22T09:00:00+07:00",
         "method": {"text": "medgate deterioration model vitals 1.1.0 on the last hour of vitals"},
         "prediction": [{"probabilityDecimal": 0.62}]},
        {"resourceType": "Flag", "id": FLAG_ID, "status": "active", "subject": {"reference": PATIENT_REF},
         "code": {"text": "NEWS2 7: clinical risk high (Observation/n2-new)"},
         "period": {"start": "2026-11-22T09:00:00+07:00"}},
    ])
    return {"study_uid": ds.StudyInstanceUID, "report": resources[0], "observations": resources[1:-1],
            "device": resources[-1]}
