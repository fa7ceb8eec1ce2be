"""TID 1500 Measurement Reports from a template per algorithm version, filled per study.

:func:`dicom_gateway.sr.reference_measurement_report` builds a report through highdicom's
template classes, which validate every content item as they go: 20-30 ms per single-image
report on the 2-core CPU machine (deep copies of the content tree, an evidence search over it,
IOD table look-ups for the header), and about half a second for the first report in a process.
Most of a report does not change from one study to the next: the observation context (TID 1001
device observer), the language, the root container, the algorithm identification (TID 4019), the
concept names of every item.  :class:`ReportTemplate` builds those once per (algorithm name,
version, manufacturer) and each report clones them (a clone copies data elements, no look-up, no
conversion) and adds what the study brings: patient and study attributes, evidence, UIDs,
tracking identifiers, probability, present/absent, image region (in the group, and as the region
the probability is INFERRED FROM, which viewers draw: see :mod:`dicom_gateway.sr`).

The result is element for element the report highdicom builds from the same arguments (the test
``tests/dicom_gateway/test_sr_template.py`` compares them recursively, except the UIDs and times
made at creation), and a :class:`highdicom.sr.Comprehensive3DSR`, so callers see no difference.
highdicom is still used where it is cheap: its coded concept and contributing equipment items,
and its IOD tables, read once per source SOP Class.

:func:`covers` tells which reports the template writes: findings on 2D images (point, box,
polygon, or unlocated).  3D locations, masks and a referenced SEG go to the reference builder.
"""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from functools import lru_cache

import highdicom as hd
from highdicom._standard_utils import (
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from highdicom.valuerep import _check_specific_character_set
from pydicom import Dataset, config
from pydicom.dataelem import DataElement
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DS, TM

from dicom_gateway.sop_common import contributing_equipment, file_meta
from dicom_gateway.sr_codes import (
    ABSENT,
    COMMENT,
    NO_UNITS,
    PATIENT_STUDY_TYPE2,
    PRESENT,
    PROBABILITY,
    QUALITATIVE_EVALUATIONS,
    SERIES_DESCRIPTION,
    device_observer_uid,
    procedure_reported,
    scheme_identification,
    tracking_identifier,
)
from models import coding_scheme
from models.finding import NOT_FOR_CLINICAL_USE, Finding

#: PS3.4 Annex B.5: Comprehensive 3D SR Storage.
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
#: PS3.3 C.17.3 Relationship Type values used in TID 1500.
CONTAINS = "CONTAINS"
HAS_OBS_CONTEXT = "HAS OBS CONTEXT"
HAS_CONCEPT_MOD = "HAS CONCEPT MOD"
INFERRED_FROM = "INFERRED FROM"
SELECTED_FROM = "SELECTED FROM"
#: (260753009, SCT, "Source"), the concept name highdicom gives source image references and the
#: image region a measurement is INFERRED FROM (TID 300 row 8, TID 320).
SOURCE = hd.sr.CodedConcept("260753009", "SCT", "Source")
#: PS3.16 TID 1204 (RFC 5646 en-US), the language highdicom's MeasurementReport declares.
LANGUAGE_OF_CONTENT = codes.DCM.LanguageOfContentItemAndDescendants
ENGLISH_US = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
#: Locations the template writes; a finding with another one goes to the reference builder.
PLANAR_LOCATIONS = ("point", "box", "polygon")
#: Modules of the Patient and Study IEs in (nearly) every composite image IOD, in highdicom's table
#: keys: PS3.3 C.7.1.1 Patient, C.7.1.3 Clinical Trial Subject, C.7.2.1 General Study, C.7.2.2
#: Patient Study, C.7.2.3 Clinical Trial Study.
PATIENT_STUDY_MODULES = ("patient", "clinical-trial-subject", "general-study", "patient-study",
                         "clinical-trial-study")
#: Their root attributes: what highdicom's ``copy_patient_and_study_information`` copies from a
#: source of such an IOD.  Written out because reading highdicom's module table costs ~0.4 s on
#: the first report of a process; a test checks this list against the table.
PATIENT_STUDY_ATTRIBUTES = (
    "ReferencedPatientSequence", "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence", "PatientBirthDate", "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar",
    "PatientAlternativeCalendar", "PatientSex", "QualityControlSubject", "StrainDescription",
    "StrainNomenclature", "StrainStockSequence", "StrainAdditionalInformation", "StrainCodeSequence",
    "GeneticModificationsSequence", "OtherPatientNames", "OtherPatientIDsSequence",
    "ReferencedPatientPhotoSequence", "EthnicGroupCodeSequence", "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence", "PatientBreedDescription", "PatientBreedCodeSequence",
    "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole",
    "ResponsibleOrganization", "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "ClinicalTrialSponsorName", "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName", "IssuerOfClinicalTrialProtocolID",
    "OtherClinicalTrialProtocolIDsSequence", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
    "IssuerOfClinicalTrialSiteID", "ClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID", "IssuerOfClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolEthicsCommitteeName", "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName", "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence", "StudyDescription", "ProcedureCodeSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "ReferencedStudySequence", "StudyInstanceUID",
    "StudyID", "RequestingService", "RequestingServiceCodeSequence",
    "ReasonForPerformedProcedureCodeSequence", "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize", "PatientSizeCodeSequence",
    "PatientBodyMassIndex", "MeasuredAPDimension", "MeasuredLateralDimension", "PatientWeight",
    "MedicalAlerts", "Allergies", "Occupation", "SmokingStatus", "AdditionalPatientHistory",
    "PregnancyStatus", "LastMenstrualDate", "PatientSexNeutered", "ReasonForVisit",
    "ReasonForVisitCodeSequence", "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID",
    "ServiceEpisodeDescription", "IssuerOfServiceEpisodeIDSequence", "PatientState",
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
    "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence"
)
#: Modules that hold Pixel Data, Float Pixel Data or Double Float Pixel Data at their root (PS3.3
#: C.7.6.3, C.7.6.24, C.7.6.25, and the Image Box Pixel Presentation of print), by highdicom's keys.
PIXEL_DATA_MODULES = frozenset({"image-pixel", "floating-point-image-pixel", "double-floating-point-image-pixel",
                                "image-box-pixel-presentation"})
#: Templates kept per process (one per algorithm version and manufacturer in use).
MAX_TEMPLATES = 64


class TemplateReport(hd.sr.Comprehensive3DSR):
    """A Comprehensive 3D SR filled from a :class:`ReportTemplate`: a
    :class:`highdicom.sr.Comprehensive3DSR` whose highdicom content tree (``.content``) is
    parsed from the dataset on first use instead of being built with it."""

    def __init__(self) -> None:  # noqa: D107 - the data elements are added by ReportTemplate.fill
        Dataset.__init__(self)

    @property
    def content(self) -> hd.sr.ContentSequence:
        if "_content" not in self.__dict__:
            self._content = hd.sr.Comprehensive3DSR.from_dataset(self, copy=True).content
        return self._content


def covers(findings: Sequence[Finding], sources: Sequence[Dataset], segmentation: Dataset | None) -> bool:
    """Whether :meth:`ReportTemplate.fill` writes the report of ``findings`` about ``sources``:
    no referenced SEG, each finding about one image with a 2D location or none, and source SOP
    Classes that highdicom's IOD tables know."""
    if segmentation is not None:
        return False
    for finding in findings:
        if finding.location not in (None, *PLANAR_LOCATIONS) or finding.other_sources:
            return False
    return all(str(ds.SOPClassUID) in get_sop_class_iod_map() for ds in sources)


@lru_cache(maxsize=MAX_TEMPLATES)
def template_for(observer_name: str, observer_version: str, manufacturer: str) -> ReportTemplate:
    """The :class:`ReportTemplate` of one algorithm version, built on first use."""
    return ReportTemplate(observer_name, observer_version, manufacturer)


@lru_cache(maxsize=None)
def _patient_study_keywords(sop_class_uid: str) -> tuple[str, ...]:
    """Root attributes of the Patient and Study IE modules of the source's IOD: what highdicom's
    ``copy_patient_and_study_information`` copies (:data:`PATIENT_STUDY_ATTRIBUTES` for the
    usual modules, else read from highdicom's tables), once per SOP Class."""
    modules = [m["key"] for m in get_iod_module_map()[get_sop_class_iod_map()[sop_class_uid]]
               if m["ie"] in ("Patient", "Study")]
    if tuple(modules) == PATIENT_STUDY_MODULES:
        return PATIENT_STUDY_ATTRIBUTES
    return patient_study_keywords_in_tables(sop_class_uid)


def patient_study_keywords_in_tables(sop_class_uid: str) -> tuple[str, ...]:
    """The root attributes of the Patient and Study IE modules of an IOD, read from highdicom's
    module table (slow the first time)."""
    modules = get_iod_module_map()[get_sop_class_iod_map()[sop_class_uid]]
    attributes = get_module_attribute_map()
    return tuple(
        str(item["keyword"])
        for ie in ("Patient", "Study")
        for module in modules if module["ie"] == ie
        for item in attributes[module["key"]] if len(item["path"]) == 0
    )


@lru_cache(maxsize=None)
def _has_pixel_data(sop_class_uid: str) -> bool:
    """Whether the IOD holds pixel data (highdicom's ``does_iod_have_pixel_data``), from its module
    list: one of :data:`PIXEL_DATA_MODULES`."""
    modules = get_iod_module_map()[get_sop_class_iod_map()[sop_class_uid]]
    return any(module["key"] in PIXEL_DATA_MODULES for module in modules)


def _clone(ds: Dataset) -> Dataset:
    """A copy of ``ds`` that shares no mutable part: sequences are copied item by item, other
    elements re-made from their values (strings and numbers, checked when the template was made)."""
    out = Dataset()
    for element in ds:
        value = [_clone(item) for item in element.value] if element.VR == "SQ" else element.value
        out.add(DataElement(element.tag, element.VR, value, already_converted=True,
                            validation_mode=config.IGNORE))
    return out


def _code(code) -> hd.sr.CodedConcept:
    """The coded concept item (PS3.3 Table 8.8-1) of a pydicom ``Code`` or highdicom ``CodedConcept``."""
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning, code.scheme_version)


def _item(value_type: str, name, relationship: str | None, **elements) -> Dataset:
    """A content item (PS3.3 C.17.3) with ``elements`` set by keyword."""
    item = Dataset()
    if relationship is not None:
        item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_coded(name)]
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


@lru_cache(maxsize=256)
def _code_item(value: str, scheme: str, meaning: str, version: str | None) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, scheme, meaning, version)


def _coded(code) -> Dataset:
    """A fresh copy of the coded concept item of ``code``, made once per code.  Keyed by every
    field: pydicom and highdicom codes compare equal without their meanings."""
    return _clone(_code_item(code.value, code.scheme_designator, code.meaning, code.scheme_version))


def _template_id(identifier: str) -> list[Dataset]:
    item = Dataset()
    item.MappingResource = "DCMR"
    item.TemplateIdentifier = identifier
    return [item]


def _image(name, relationship: str, sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = sop_class_uid
    reference.ReferencedSOPInstanceUID = sop_instance_uid
    return _item("IMAGE", name, relationship, ReferencedSOPSequence=[reference])


def _graphic(finding: Finding) -> tuple[str, list[float]]:
    """SCOORD Graphic Type and Graphic Data of a 2D location, as the reference writes them."""
    if finding.point is not None:
        return "POINT", [float(v) for v in finding.point]
    if finding.box is not None:
        c0, r0, c1, r1 = (float(v) for v in finding.box)
        vertices = [(c0, r0), (c1, r0), (c1, r1), (c0, r1)]
    else:
        vertices = [(float(c), float(r)) for c, r in finding.polygon]
    return "POLYLINE", [v for vertex in (*vertices, vertices[0]) for v in vertex]


class ReportTemplate:
    """The parts of a TID 1500 report that one algorithm version writes on every study.

    Parameters
    ----------
    observer_name, observer_version: str
        Algorithm name and version: the device observer (TID 1004), Manufacturer's Model Name
        and Software Versions of the report.
    manufacturer: str
        Manufacturer of the report and of the algorithm.
    """

    def __init__(self, observer_name: str, observer_version: str, manufacturer: str) -> None:
        for name, value in (("observer_name", observer_name), ("observer_version", observer_version),
                            ("manufacturer", manufacturer)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, {value!r} is given.")
        self.observer_name, self.observer_version = observer_name, observer_version
        self.manufacturer = manufacturer
        header = Dataset()
        header.Modality = "SR"
        header.SeriesDescription = SERIES_DESCRIPTION
        header.Manufacturer = manufacturer
        header.ManufacturerModelName = observer_name
        header.SoftwareVersions = observer_version
        header.SOPClassUID = COMPREHENSIVE_3D_SR
        header.CompletionFlag = "COMPLETE"
        header.VerificationFlag = "UNVERIFIED"
        header.PreliminaryFlag = "PRELIMINARY"
        header.ValueType = "CONTAINER"
        header.ContinuityOfContent = "CONTINUOUS"
        self._header = header
        self._root_name = _code(codes.DCM.ImagingMeasurementReport)
        self._context = [  # TID 1500 rows 2-3: language; TID 1001/1002/1004 device observer
            _item("CODE", LANGUAGE_OF_CONTENT, HAS_CONCEPT_MOD, ConceptCodeSequence=[_code(ENGLISH_US)]),
            _item("CODE", codes.DCM.ObserverType, HAS_OBS_CONTEXT, ConceptCodeSequence=[_code(codes.DCM.Device)]),
            _item("UIDREF", codes.DCM.DeviceObserverUID, HAS_OBS_CONTEXT,
                  UID=device_observer_uid(observer_name, observer_version)),
            _item("TEXT", codes.DCM.DeviceObserverName, HAS_OBS_CONTEXT, TextValue=observer_name),
            _item("TEXT", codes.DCM.DeviceObserverManufacturer, HAS_OBS_CONTEXT, TextValue=manufacturer),
            _item("TEXT", codes.DCM.DeviceObserverModelName, HAS_OBS_CONTEXT, TextValue=observer_name),
        ]
        self._algorithms: dict[tuple[str, str, float], list[Dataset]] = {}

    # -- cached parts ------------------------------------------------------------------------
    def _algorithm(self, name: str, version: str, threshold: float) -> list[Dataset]:
        """TID 4019 Algorithm Identification items (name, version, manufacturer, operating point)."""
        key = (name, version, threshold)
        items = self._algorithms.get(key)
        if items is None:
            items = self._algorithms[key] = [
                _item("TEXT", codes.DCM.AlgorithmName, HAS_CONCEPT_MOD, TextValue=name),
                _item("TEXT", codes.DCM.AlgorithmVersion, HAS_CONCEPT_MOD, TextValue=version),
                _item("TEXT", codes.DCM.AlgorithmManufacturer, HAS_CONCEPT_MOD, TextValue=self.manufacturer),
                _item("TEXT", codes.DCM.AlgorithmParameters, HAS_CONCEPT_MOD,
                      TextValue=f"operating point (threshold) = {threshold:g}"),
            ]
        return [_clone(item) for item in items]

    # -- per study ---------------------------------------------------------------------------
    @staticmethod
    def _region(finding: Finding, relationship: str, name) -> Dataset:
        """SCOORD of the finding's 2D location on its image: the group's TID 1410 Image Region
        (CONTAINS) or the image region its probability is INFERRED FROM (TID 300, TID 320), which
        the OHIF Viewer's reader draws."""
        image = finding.source
        graphic_type, graphic_data = _graphic(finding)
        region = _item("SCOORD", name, relationship, ContentSequence=[
            _image(SOURCE, SELECTED_FROM, image.sop_class_uid, image.sop_instance_uid)
        ])
        region.GraphicData = graphic_data
        region.GraphicType = graphic_type
        return region

    def _group(self, index: int, finding: Finding, name: str, version: str) -> Dataset:
        """TID 1410 (located) or TID 1501 (unlocated) measurement group of one finding."""
        image = finding.source
        finding_type = hd.sr.CodedConcept(finding.code.value, finding.code.scheme, finding.code.meaning)
        value = float(finding.probability)
        region = None if finding.location is None else self._region(finding, CONTAINS, codes.DCM.ImageRegion)
        measured = Dataset()
        measured.MeasurementUnitsCodeSequence = [_coded(NO_UNITS)]
        measured.FloatingPointValue = value
        measured.NumericValue = DS(value, auto_format=True)
        items = [
            _item("TEXT", codes.DCM.TrackingIdentifier, HAS_OBS_CONTEXT,
                  TextValue=tracking_identifier(finding, index, region is not None)),
            _item("UIDREF", codes.DCM.TrackingUniqueIdentifier, HAS_OBS_CONTEXT, UID=generate_uid()),
            _item("CODE", codes.DCM.Finding, CONTAINS, ConceptCodeSequence=[_code(finding_type)]),
            *self._algorithm(name, version, finding.threshold),
            _item("NUM", PROBABILITY, CONTAINS, MeasuredValueSequence=[measured], ContentSequence=[
                _image(codes.DCM.SourceOfMeasurement, INFERRED_FROM, image.sop_class_uid, image.sop_instance_uid),
                *([] if region is None else [self._region(finding, INFERRED_FROM, SOURCE)]),
            ]),
            *([] if finding.outside else [_item("CODE", finding_type, CONTAINS,
                                                ConceptCodeSequence=[_coded(PRESENT if finding.positive else ABSENT)])]),
        ]
        if finding.location is None:
            template = "1501"
            items += [_image(codes.DCM.SourceOfMeasurement, CONTAINS, s.sop_class_uid, s.sop_instance_uid)
                      for s in finding.sources]
        else:
            template = "1410"
            items.append(region)
        return _item("CONTAINER", codes.DCM.MeasurementGroup, CONTAINS, ContinuityOfContent="CONTINUOUS",
                     ContentTemplateSequence=_template_id(template), ContentSequence=items)

    def fill(
        self,
        findings: Sequence[Finding],
        sources: Sequence[Dataset],
        *,
        series_number: int,
        instance_number: int,
        series_instance_uid: str,
        sop_instance_uid: str,
        algorithm_name: str | None = None,
        algorithm_version: str | None = None,
    ) -> TemplateReport:
        """The report of ``findings`` about ``sources`` (checked by the caller, covered by
        :func:`covers`); arguments as :func:`dicom_gateway.sr.build_measurement_report`."""
        first = sources[0]
        sr = TemplateReport()
        sr.preamble = b"\x00" * 128
        sr.file_meta = file_meta(COMPREHENSIVE_3D_SR, str(sop_instance_uid))
        for element in _clone(self._header):
            sr.add(element)
        sr.PerformedProcedureCodeSequence = []
        sr.ReferencedPerformedProcedureStepSequence = []
        sr.ConceptNameCodeSequence = [_clone(self._root_name)]
        sr.ContentTemplateSequence = _template_id("1500")
        now = datetime.datetime.now()
        sr.InstanceCreationDate = DA(now.date())
        sr.InstanceCreationTime = TM(now.time())
        sr.ContentDate = DA(now.date())
        sr.ContentTime = TM(now.time())
        character_set = first.get("SpecificCharacterSet")
        if character_set is not None:
            sr.SpecificCharacterSet = _check_specific_character_set(character_set)
        sr.SeriesInstanceUID = str(series_instance_uid)
        sr.SeriesNumber = series_number
        sr.SOPInstanceUID = str(sop_instance_uid)
        sr.InstanceNumber = instance_number
        for keyword in _patient_study_keywords(str(first.SOPClassUID)):
            if keyword in first:
                sr.add(first[keyword])
        for keyword in PATIENT_STUDY_TYPE2:
            if keyword not in first:
                setattr(sr, keyword, "")
        sr.CurrentRequestedProcedureEvidenceSequence = _evidence(sources)
        sr.ContributingEquipmentSequence = contributing_equipment(first, _has_pixel_data(str(first.SOPClassUID)))
        private = sorted({f.code.scheme for f in findings if coding_scheme.is_private(f.code.scheme)})
        if private:
            sr.CodingSchemeIdentificationSequence = [scheme_identification(s) for s in private]
        groups = [
            self._group(i, f, algorithm_name or f.model, algorithm_version or f.model_version)
            for i, f in enumerate(findings, start=1)
        ]
        notes = report_notes(findings)
        sr.ContentSequence = [
            *(_clone(item) for item in self._context),
            _item("CODE", codes.DCM.ProcedureReported, HAS_CONCEPT_MOD,
                  ConceptCodeSequence=[_code(procedure_reported(first))]),
            _item("CONTAINER", codes.DCM.ImagingMeasurements, CONTAINS, ContinuityOfContent="CONTINUOUS",
                  ContentSequence=groups),
            _item("CONTAINER", QUALITATIVE_EVALUATIONS, CONTAINS, ContinuityOfContent="CONTINUOUS",
                  ContentSequence=[_item("TEXT", COMMENT, CONTAINS, TextValue=note) for note in notes]),
        ]
        return sr


def report_notes(findings: Sequence[Finding]) -> tuple[str, ...]:
    """The TEXT items of the root "Qualitative Evaluations" container (both writers): the
    not-for-clinical-use statement, each finding's notes and, for a finding whose input lies outside
    the model's training distribution, its :attr:`~models.finding.Finding.ood_note` (its group then
    has no present / absent evaluation: no call is made)."""
    return tuple(dict.fromkeys((NOT_FOR_CLINICAL_USE, *(n for f in findings for n in f.notes),
                                *(f.ood_note for f in findings if f.outside))))


def _evidence(sources: Sequence[Dataset]) -> list[Dataset]:
    """Current Requested Procedure Evidence Sequence (PS3.3 C.17.2.3): the sources by series."""
    by_series: dict[str, list[Dataset]] = {}
    seen: set[str] = set()
    for ds in sources:
        if ds.SOPInstanceUID in seen:
            continue
        seen.add(ds.SOPInstanceUID)
        reference = Dataset()
        reference.ReferencedSOPClassUID = ds.SOPClassUID
        reference.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        by_series.setdefault(ds.SeriesInstanceUID, []).append(reference)
    series_items = []
    for series_uid, references in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = references
        series_items.append(item)
    study = Dataset()
    study.StudyInstanceUID = sources[0].StudyInstanceUID
    study.ReferencedSeriesSequence = series_items
    return [study]
