"""Codes, fixed texts and derived identifiers of medgate's TID 1500 Measurement Reports.

Shared by the two writers of the same report: :mod:`dicom_gateway.sr` (highdicom, the reference)
and :mod:`dicom_gateway.sr_template` (the per-model-version template filled per study).
"""
from __future__ import annotations

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from models import coding_scheme
from models.finding import Finding

#: PS3.16 Annex D: (122157, DCM, "Probability"), the measurement concept for a model output
#: probability; the value is a dimensionless number in [0, 1].
PROBABILITY = codes.DCM.Probability
#: UCUM unit "1" (dimensionless, meaning "no units"), as listed in PS3.16 CID 7181.
NO_UNITS = codes.UCUM.NoUnits
#: PS3.16 CID 241 "Present-Absent Only": (52101004, SCT) and (272519000, SCT).
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
#: PS3.16 Annex D: (121106, DCM, "Comment"), name of the free-text disclaimer item.
COMMENT = codes.DCM.Comment
#: TID 1500 row 12 container concept name.
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

#: LOINC 36554-4 "XR Chest Single view" (LOINC/RSNA Radiology Playbook); TID 1500 Procedure
#: Reported uses the extensible CID 100, which this code extends for single-image chest X-ray.
XR_CHEST_SINGLE_VIEW = hd.sr.CodedConcept("36554-4", "LN", "XR Chest Single view")
#: PS3.16 CID 100 "Quantitative Diagnostic Imaging Procedures" per source Modality.
PROCEDURES_BY_MODALITY = {
    "CR": codes.LN.XRUnspecifiedBodyRegion,
    "DX": codes.LN.XRUnspecifiedBodyRegion,
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
}
#: CID 100 fallback: (363679005, SCT, "Imaging procedure").
IMAGING_PROCEDURE = codes.SCT.ImagingProcedure

#: The Tracking Identifier (TID 4108) prefix of the annotations of Cornerstone3D, the OHIF Viewer's
#: imaging library: ``@cornerstonejs/adapters`` (``Cornerstone3D/cornerstone3DTag.js``) loads a
#: measurement group as an annotation only when its identifier starts with ``<tag>:<tool>``.
CORNERSTONE_3D_TAG = "Cornerstone3DTools@^0.1.0"
#: The Cornerstone3D tool each location kind is shown with: the image region the group's
#: measurement is INFERRED FROM (TID 300 / TID 320 SCOORD), a POINT for ``point`` and for 3D
#: locations (on the slice they lie on), a closed POLYLINE of 5 points for ``box`` (the adapters'
#: RectangleROI) and a closed POLYLINE for ``polygon`` (PlanarFreehandROI).
VIEWER_TOOLS = {
    "point": "Probe", "box": "RectangleROI", "polygon": "PlanarFreehandROI", "point_3d_mm": "Probe",
    "mask": "Probe",
}

#: Series Description (0008,103E) of every report: PACS series lists show it.
SERIES_DESCRIPTION = "AI result - not for clinical use"

#: Type 2 Patient and General Study attributes (PS3.3 C.7.1.1, C.7.2.1) that the report copies
#: from the evidence; an incoming image that lacks one gets it empty in the report.
PATIENT_STUDY_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
    "StudyDate", "StudyTime", "ReferringPhysicianName",
)


def procedure_reported(source: Dataset) -> hd.sr.CodedConcept:
    """The TID 1500 Procedure Reported code derived from the source image's modality/body part."""
    modality = str(source.get("Modality", "")).upper()
    body_part = str(source.get("BodyPartExamined", "")).upper()
    if modality in ("CR", "DX") and body_part == "CHEST":
        return XR_CHEST_SINGLE_VIEW
    return hd.sr.CodedConcept.from_code(PROCEDURES_BY_MODALITY.get(modality, IMAGING_PROCEDURE))


def device_observer_uid(name: str, version: str) -> str:
    """A UID that identifies one algorithm version: the same on every run and every host."""
    return generate_uid(entropy_srcs=["medgate device observer", name, version])


def scheme_identification(designator: str) -> CodingSchemeIdentificationItem:
    """PS3.3 C.12.1.1.3 Coding Scheme Identification of a private designator: medgate's own with
    its UID, name and responsible organization (:mod:`models.coding_scheme`)."""
    if designator != coding_scheme.DESIGNATOR:
        return CodingSchemeIdentificationItem(designator)
    item = CodingSchemeIdentificationItem(
        designator, name=coding_scheme.NAME,
        responsible_organization=coding_scheme.RESPONSIBLE_ORGANIZATION,
    )
    # Coding Scheme UID (0008,010C), Type 1C: required when the scheme has an OID, registered or
    # not (highdicom sets it only together with a Coding Scheme Registry).
    item.CodingSchemeUID = coding_scheme.UID
    return item


def tracking_identifier(finding: Finding, index: int, on_image: bool) -> str:
    """TID 4108 Tracking Identifier of the ``index``-th finding of a report: "<meaning> finding
    <index>", led by :data:`CORNERSTONE_3D_TAG` and the finding's :data:`VIEWER_TOOLS` tool when
    the group carries an image region a viewer can draw (``on_image``)."""
    label = f"{finding.code.meaning} finding {index}"
    if not on_image:
        return label
    return f"{CORNERSTONE_3D_TAG}:{VIEWER_TOOLS[finding.location]}:{label}"
