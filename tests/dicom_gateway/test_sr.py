"""TID 1500 Measurement Reports of findings: content, validity (dciodvfy), readability (dsrdump)."""
from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicom_gateway.sr import build_measurement_report
from dicom_gateway.sr_codes import PROBABILITY, SERIES_DESCRIPTION, XR_CHEST_SINGLE_VIEW, device_observer_uid
from models import coding_scheme
from models.finding import NOT_FOR_CLINICAL_USE, Concept, Finding, SourceImage
from peers import dciodvfy_errors
from training.synthetic.dicom import make_dx_dataset

needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None,
    reason="dicom3tools dciodvfy not installed (make test installs it when root)",
)
needs_dsrdump = pytest.mark.skipif(
    shutil.which("dsrdump") is None,
    reason="DCMTK dsrdump not installed (make test installs it when root)",
)

TUBERCULOSIS = Concept("56717001", "SCT", "Tuberculosis")


def gradient(rows: int = 96, columns: int = 80) -> np.ndarray:
    ramp = np.add.outer(np.arange(rows), np.arange(columns)) / (rows + columns - 2)
    return np.round(ramp * 4095).astype(np.uint16)


@pytest.fixture
def source() -> pydicom.Dataset:
    return make_dx_dataset(gradient(), accession="ACC1")


def finding_for(ds: pydicom.Dataset, probability: float = 0.87, point=None, **kwargs) -> Finding:
    image = SourceImage(
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        rows=ds.Rows,
        columns=ds.Columns,
    )
    args = {"model": "tb", "model_version": "1.2.0", "code": TUBERCULOSIS, "threshold": 0.5}
    args.update(kwargs)
    return Finding(probability=probability, source=image, point=point, **args)


def run_tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def groups_of(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    root = sr.ContentSequence
    measurements = next(i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    return list(measurements.ContentSequence)


def item(group: pydicom.Dataset, value_type: str, code_value: str | None = None) -> pydicom.Dataset:
    return next(
        i for i in group.ContentSequence
        if i.ValueType == value_type
        and (code_value is None or i.ConceptNameCodeSequence[0].CodeValue == code_value)
    )


def test_located_finding_is_a_planar_roi_group_with_a_point(source):
    sr = build_measurement_report([finding_for(source, point=(40.5, 22.0))], source)
    (group,) = groups_of(sr)
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1410"
    scoord = item(group, "SCOORD")
    assert scoord.GraphicType == "POINT"
    assert [float(v) for v in scoord.GraphicData] == [40.5, 22.0]
    assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )
    num = item(group, "NUM", PROBABILITY.value)
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.87)
    unit = num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
    assert num.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )
    # TID 300 row 8 (TID 320): the probability is INFERRED FROM the same region, the content
    # viewers draw (tests/dicom_gateway/test_sr_viewer.py loads it with the OHIF Viewer's reader)
    inferred = item(num, "SCOORD")
    assert inferred.RelationshipType == "INFERRED FROM"
    assert (inferred.GraphicType, list(inferred.GraphicData)) == (scoord.GraphicType, list(scoord.GraphicData))
    (selected,) = inferred.ContentSequence
    assert selected.RelationshipType == "SELECTED FROM"
    assert selected.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert item(group, "TEXT", "112039").TextValue.startswith("Cornerstone3DTools@^0.1.0:Probe:")
    evaluation = item(group, "CODE", TUBERCULOSIS.value)
    assert evaluation.ConceptCodeSequence[0].CodeValue == codes.SCT.Present.value


def test_unlocated_negative_finding_is_a_tid1501_group_with_the_image(source):
    sr = build_measurement_report([finding_for(source, probability=0.12)], source)
    (group,) = groups_of(sr)
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
    assert not [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
    image = item(group, "IMAGE")
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    evaluation = item(group, "CODE", TUBERCULOSIS.value)
    assert evaluation.ConceptCodeSequence[0].CodeValue == codes.SCT.Absent.value


def test_report_files_into_the_source_study_and_says_not_for_clinical_use(source):
    findings = [finding_for(source, point=(1.0, 2.0)), finding_for(source, 0.3)]
    sr = build_measurement_report(findings, source, series_number=42, instance_number=7)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
        assert sr[keyword].value == source[keyword].value
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sr.SeriesNumber, sr.InstanceNumber) == (42, 7)
    assert sr.SeriesDescription == SERIES_DESCRIPTION
    assert sr.VerificationFlag == "UNVERIFIED"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    trackers = [item(g, "TEXT", "112039").TextValue for g in groups_of(sr)]
    # a located finding's identifier leads with the viewer tool that draws it (Cornerstone3D's
    # "<tag>:<tool>", which @cornerstonejs/adapters requires); an unlocated one is its label alone
    assert trackers == ["Cornerstone3DTools@^0.1.0:Probe:Tuberculosis finding 1", "Tuberculosis finding 2"]
    texts = [i.TextValue for i in sr.ContentSequence[-1].ContentSequence]
    assert NOT_FOR_CLINICAL_USE in texts
    procedure = next(
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"
    )
    assert procedure.ConceptCodeSequence[0].CodeValue == XR_CHEST_SINGLE_VIEW.value


def test_source_missing_type2_attributes_still_gives_a_report(source):
    for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "ReferringPhysicianName"):
        del source[keyword]
    del source.PixelData
    sr = build_measurement_report([finding_for(source)], source)
    assert sr.PatientBirthDate == "" and sr.StudyID == ""
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert "PatientBirthDate" not in source  # the caller's dataset is left alone


def test_algorithm_is_the_device_observer_and_identified_on_each_group(source):
    sr = build_measurement_report(
        [finding_for(source)], source, algorithm_name="TB screen", algorithm_version="2.0"
    )
    observer_uid = item(sr, "UIDREF", "121012").UID
    assert observer_uid == device_observer_uid("TB screen", "2.0")
    assert observer_uid == device_observer_uid("TB screen", "2.0")  # stable across runs
    assert observer_uid != device_observer_uid("TB screen", "2.1")
    (group,) = groups_of(sr)
    assert item(group, "TEXT", "111001").TextValue == "TB screen"
    assert item(group, "TEXT", "111003").TextValue == "2.0"

    default = build_measurement_report([finding_for(source)], source)
    assert item(groups_of(default)[0], "TEXT", "111003").TextValue == "1.2.0"


@needs_dciodvfy
def test_private_finding_codes_identify_their_scheme(source, tmp_path):
    code = Concept("TB01", "99MEDGATE", "Tuberculosis-like opacity")
    sr = build_measurement_report([finding_for(source, code=code)], source)
    (scheme,) = sr.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == "99MEDGATE" == coding_scheme.DESIGNATOR
    assert scheme.CodingSchemeName == "medgate local codes"
    assert scheme.CodingSchemeResponsibleOrganization == "medgate contributors"
    assert scheme.CodingSchemeUID == coding_scheme.UID and coding_scheme.UID.startswith("2.25.")
    path = tmp_path / "sr-private.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


@needs_dciodvfy
@needs_dsrdump
@pytest.mark.parametrize("point", [(40.5, 22.0), None], ids=["located", "unlocated"])
def test_written_report_is_valid_and_dumps(tmp_path, source, point):
    path = tmp_path / "sr.dcm"
    sr = build_measurement_report([finding_for(source, 0.87, point=point)], source)
    sr.save_as(path, enforce_file_format=True)

    check = run_tool("dciodvfy", str(path))
    lines = (check.stdout + check.stderr).splitlines()
    for line in lines:
        if line.startswith("Warning"):
            print(line)
    assert not [line for line in lines if "Error" in line], "\n".join(lines)

    dump = run_tool("dsrdump", str(path))
    assert dump.returncode == 0, dump.stderr
    assert "0.87" in dump.stdout
    assert "Tuberculosis" in dump.stdout
    assert "Probability" in dump.stdout
    assert "not for clinical use" in dump.stdout


def test_findings_from_another_study_are_refused(source):
    other = make_dx_dataset(gradient())
    with pytest.raises(ValueError, match=r"findings\[1\].*study"):
        build_measurement_report([finding_for(source), finding_for(other)], source)


def test_findings_about_another_image_of_the_study_are_refused(source):
    sibling = make_dx_dataset(gradient(), study_uid=source.StudyInstanceUID)
    with pytest.raises(ValueError, match=r"findings\[0\].*image"):
        build_measurement_report([finding_for(sibling)], source)


def test_empty_findings_are_refused(source):
    with pytest.raises(ValueError, match="findings"):
        build_measurement_report([], source)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"series_number": 0}, "series_number"),
        ({"instance_number": -1}, "instance_number"),
        ({"manufacturer": " "}, "manufacturer"),
    ],
)
def test_bad_keyword_arguments_are_named(source, kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_measurement_report([finding_for(source)], source, **kwargs)


def test_wrong_types_are_named(source):
    with pytest.raises(TypeError, match="findings"):
        build_measurement_report(finding_for(source), source)
    with pytest.raises(TypeError, match="source"):
        build_measurement_report([finding_for(source)], {"StudyInstanceUID": "1.2"})
