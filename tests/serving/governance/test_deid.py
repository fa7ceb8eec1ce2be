"""De-identified export: every row of Table E.1-1 planted with a marked value in DX, CT, VL
Photographic and SR instances; nothing marked survives the exported file, Type 1 and 2 attributes
stay, and dciodvfy finds no new Error."""
from __future__ import annotations

import shutil
import subprocess
from datetime import date, datetime, timedelta
from functools import lru_cache

import numpy as np
import pytest
from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from dicom_gateway.implementation import IMPLEMENTATION_CLASS_UID
from dicom_gateway.sr import build_measurement_report
from dicom_testdata import make_ct_series
from models.finding import Concept, Finding, SourceImage
from serving.governance.deid import DeidentificationError, Deidentifier
from serving.governance.deid_profile import BASIC_PROFILE
from training.synthetic.dicom import make_dx_dataset

SALT = b"0123456789abcdef-test-salt"
#: PS3.6 Annex A: VL Photographic Image Storage.
VL_PHOTOGRAPHIC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.4")
MARK = "MK"  # every planted text value starts with it
UID_ROOT = "1.2.826.0.1.3680043.10.999."  # every planted UID starts with it
NESTED_NAME = "MKNESTED^Jane"
needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                    reason="dicom3tools dciodvfy not installed (make test installs it when root)")


def _gradient(rows: int = 64, columns: int = 48) -> np.ndarray:
    return np.round(np.add.outer(np.arange(rows), np.arange(columns)) / (rows + columns) * 4095).astype(np.uint16)


def dx() -> Dataset:
    return make_dx_dataset(_gradient(), accession="ACC1")


def ct() -> Dataset:
    return make_ct_series(np.full((2, 32, 32), 1000, np.uint16))[0]


def vl_photo() -> Dataset:
    """A VL Photographic Image (PS3.3 A.32.4), its patient, study and equipment from a DX."""
    ds = dx()
    for keyword in ("ImagerPixelSpacing", "PixelSpacing", "PresentationIntentType", "ViewCodeSequence",
                    "AnatomicRegionSequence", "ViewPosition", "BodyPartExamined", "DetectorType",
                    "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth",
                    "PresentationLUTShape", "ImageLaterality", "PatientOrientation", "FieldOfViewRotation",
                    "FieldOfViewHorizontalFlip", "PositionerType", "DetectorConditionsNominalFlag",
                    "DetectorID", "DetectorTemperature", "PixelIntensityRelationship",
                    "PixelIntensityRelationshipSign", "BurnedInAnnotation", "LossyImageCompression",
                    "DistanceSourceToDetector", "ExposureIndex", "KVP", "Exposure", "ExposureTime",
                    "ImageAndFluoroscopyAreaDoseProduct", "ReferencedPerformedProcedureStepSequence"):
        ds.pop(keyword, None)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = VL_PHOTOGRAPHIC_STORAGE
    ds.Modality = "XC"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.Rows, ds.Columns = 16, 16
    ds.PixelData = np.zeros((16, 16, 3), np.uint8).tobytes()
    ds.LossyImageCompression = "00"
    ds.AcquisitionContextSequence = Sequence()
    return ds


def sr() -> Dataset:
    source = dx()
    image = SourceImage(study_uid=source.StudyInstanceUID, series_uid=source.SeriesInstanceUID,
                        sop_instance_uid=source.SOPInstanceUID, sop_class_uid=source.SOPClassUID,
                        rows=source.Rows, columns=source.Columns)
    finding = Finding(probability=0.87, source=image, point=(20.5, 10.0), model="tb", model_version="1.2.0",
                      code=Concept("56717001", "SCT", "Tuberculosis"), threshold=0.5)
    report = build_measurement_report([finding], source)
    report.file_meta.SourceApplicationEntityTitle = "MEDGATE"
    return report


MAKERS = {"DX": dx, "CT": ct, "VL Photographic": vl_photo, "SR": sr}


def _marked(tag: int, n: int, vr: str):
    """A value for row ``n`` that is recognisably planted: text ``MK<n>``, a UID under UID_ROOT..."""
    day = date(2019, 1, 1) + timedelta(days=n)
    if vr == "SQ":
        item = Dataset()
        item.PatientName = f"{MARK}{n:04d}^Nested"
        item.ReferencedSOPInstanceUID = f"{UID_ROOT}{n}.1"
        item.add_new(0x00091010, "LO", f"{MARK}{n:04d}PRIVATE")
        return Sequence([item])
    return {"UI": f"{UID_ROOT}{n}", "DA": day.strftime("%Y%m%d"), "DT": day.strftime("%Y%m%d") + "101010",
            "TM": f"{n % 24:02d}{n % 60:02d}{n % 60:02d}.{n:06d}", "PN": f"{MARK}{n:04d}^Doe",
            "UR": f"http://{MARK.lower()}{n:04d}.example", "AS": f"{n % 1000:03d}Y", "DS": str(70000 + n),
            "IS": str(70000 + n), "US": 1000 + n, "SS": 1000 + n, "UL": 70000 + n, "SL": 70000 + n,
            "FL": 70000.5 + n, "FD": 70000.5 + n}.get(vr, (f"{MARK}{n:04d}".encode() if vr in ("OB", "OW", "UN")
                                                            else f"{MARK}{n:04d}"))


def plant(ds: Dataset) -> dict[int, object]:
    """Every attribute row of the table set to a marked value (existing sequences kept, as the
    instance needs them), plus the leaks the audit saw; returns tag -> planted value."""
    planted = {}
    for n, tag in enumerate(sorted(BASIC_PROFILE), start=1):
        if tag >> 16 in (0x0000, 0x0002):  # command and file meta groups: not in a stored data set
            continue
        vr = dictionary_VR(tag).split(" ")[0] if dictionary_has_tag(tag) else "LO"
        if vr == "SQ" and tag in ds:
            continue
        ds.add_new(tag, vr, _marked(tag, n, vr))
        planted[tag] = ds[tag].value
    holder = Dataset()  # a Patient's Name inside a sequence the table does not list
    holder.CodeValue, holder.CodingSchemeDesignator, holder.CodeMeaning = "113076", "DCM", "Segmentation"
    holder.PatientName = NESTED_NAME
    ds.DerivationCodeSequence = Sequence([holder])
    ds.private_block(0x0029, "MK VENDOR", create=True).add_new(0x10, "LO", "MKPRIVATE")
    ds.file_meta.SourceApplicationEntityTitle = "MKSOURCEAE"
    ds.file_meta.SendingApplicationEntityTitle = "MKSENDINGAE"
    ds.file_meta.PrivateInformationCreatorUID = f"{UID_ROOT}0.9"
    ds.file_meta.PrivateInformation = b"MKPRIV"
    return planted


def export(ds: Dataset, tmp_path, name: str):
    path = tmp_path / f"{name}.dcm"
    Deidentifier(SALT).apply(ds).save_as(path, enforce_file_format=True)
    return path, dcmread(path)


def _all_elements(ds: Dataset):
    yield from ds.file_meta
    yield from ds.iterall()


@lru_cache(1)
def _required_top_level() -> dict[str, set[str]]:
    """IOD -> keywords of its top-level Type 1 and 2 attributes (PS3.3, via highdicom's data).  The
    conditional ones are left out: the table removes some whose condition a human patient never
    meets (Responsible Person, 2C for an animal)."""
    modules, out = get_module_attribute_map(), {}
    for iod, iod_modules in get_iod_module_map().items():
        out[iod] = {a["keyword"] for m in iod_modules for a in modules.get(m["key"], [])
                    if not a["path"] and a["type"] in ("1", "2")}
    return out


def _dciodvfy_errors(path) -> set[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.parametrize("kind", MAKERS)
def test_no_planted_value_survives_the_export(tmp_path, kind):
    ds = MAKERS[kind]()
    planted = plant(ds)
    assert len(planted) > 600, f"only {len(planted)} of {len(BASIC_PROFILE)} rows planted in {kind}"
    path, out = export(ds, tmp_path, "planted")
    raw = path.read_bytes()
    assert MARK.encode() not in raw, f"a marked text value survives in the {kind} file"
    assert UID_ROOT.encode() not in raw, f"a planted UID survives in the {kind} file"
    for elem in _all_elements(out):
        if elem.tag in planted and elem.VR != "SQ":
            assert elem.value != planted[elem.tag] or elem.value in (None, "", b""), (
                f"{kind}: {elem.tag} {elem.keyword} kept its planted value {elem.value!r}")
    assert not any(elem.tag.is_private for elem in _all_elements(out))
    assert not [e for e in out.iterall() if e.tag.group == 0x0016 and 0x0070 <= e.tag.element <= 0x008E], \
        "GPS attributes (0016,0070-008E) survive"
    for keyword in ("CameraOwnerName", "MakerNote", "DigitalSignaturesSequence", "DataSetTrailingPadding"):
        assert keyword not in out, keyword
    assert not out.DerivationCodeSequence[0].PatientName  # the nested name emptied (Z)
    meta = out.file_meta
    assert sorted(e.keyword for e in meta) == sorted([
        "FileMetaInformationGroupLength", "FileMetaInformationVersion", "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID", "TransferSyntaxUID", "ImplementationClassUID", "ImplementationVersionName"])
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID and meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID


@pytest.mark.parametrize("kind", MAKERS)
def test_type_1_and_2_attributes_stay_present(tmp_path, kind):
    clean, planted = MAKERS[kind](), MAKERS[kind]()
    plant(planted)
    required = _required_top_level()[get_sop_class_iod_map()[str(clean.SOPClassUID)]]
    for name, ds in (("clean", clean), ("planted", planted)):
        before = {elem.keyword for elem in ds if elem.keyword in required}
        _path, out = export(ds, tmp_path, name)
        missing = sorted(k for k in before if k not in out)
        assert not missing, f"{kind} ({name}): Type 1/2 attributes removed: {missing}"


def test_sr_content_sequence_is_kept_and_cleaned(tmp_path):
    report = sr()
    before = len(report.ContentSequence)
    texts = {e.value for e in report.iterall() if e.keyword == "TextValue"}
    _path, out = export(report, tmp_path, "sr")
    assert len(out.ContentSequence) == before > 0
    assert out.ContentSequence[0].ConceptNameCodeSequence[0].CodeValue  # codes kept
    assert texts, "the report has no TEXT item to check"
    assert not texts & {e.value for e in out.iterall() if e.keyword == "TextValue"}  # free text: a dummy


def test_d_on_an_empty_sequence_gives_one_item():
    ds = dx()
    ds.GraphicAnnotationSequence = Sequence()  # (0070,0001) D
    Deidentifier(SALT).apply(ds)
    assert len(ds.GraphicAnnotationSequence) == 1


def test_composite_actions_follow_the_type_in_the_iod():
    photo, ct_image = vl_photo(), ct()
    for ds in (photo, ct_image):
        ds.AcquisitionContextSequence = Sequence([Dataset()])  # X/Z: Type 2 in VL Photographic
        ds.StationName = "MKSTATION"  # X/Z/D: Type 3 in General Equipment
    Deidentifier(SALT).apply(photo)
    Deidentifier(SALT).apply(ct_image)
    assert "AcquisitionContextSequence" in photo and len(photo.AcquisitionContextSequence) == 0
    assert "AcquisitionContextSequence" not in ct_image  # not in the CT Image IOD: Type 3
    assert "StationName" not in photo and "StationName" not in ct_image


def test_unknown_attributes_are_removed_and_unlisted_names_replaced():
    ds = dx()
    ds.add_new(0x00231234, "LO", "MK odd group")  # private, no creator
    ds.add_new(0x00080000 | 0x7FF0, "LO", "MK unknown")  # not in the data dictionary
    ds.add_new(0x00142006, "PN", "MK^Evaluator")  # Evaluator Name: unlisted Person Name, Type 3 here
    ds.Manufacturer = "Acme"  # unlisted and known: kept
    Deidentifier(SALT).apply(ds)
    assert 0x00231234 not in ds and 0x00087FF0 not in ds and 0x00142006 not in ds
    assert ds.Manufacturer == "Acme"


def test_dates_and_times_move_back_together():
    deid = Deidentifier(SALT)
    ds = dx()
    ds.StudyDate, ds.StudyTime = "20261102", "233000"
    ds.AcquisitionDateTime = "20261102233000.5+0100"
    ds.SeriesDate = "20261105"
    ds.pop("SeriesTime", None)
    patient = str(ds.PatientID)
    deid.apply(ds)
    offset = timedelta(days=deid.shift_days(patient), seconds=deid.shift_seconds(patient))
    study = datetime.strptime(ds.StudyDate + ds.StudyTime, "%Y%m%d%H%M%S")
    assert study == datetime(2026, 11, 2, 23, 30) - offset
    assert ds.AcquisitionDateTime == (datetime(2026, 11, 2, 23, 30) - offset).strftime("%Y%m%d%H%M%S") + ".5+0100"
    assert ds.SeriesDate == (date(2026, 11, 5) - timedelta(days=offset.days)).strftime("%Y%m%d")
    assert not ds.PatientBirthDate


def test_uids_and_dates_are_consistent_per_salt_and_patient():
    a, b = dx(), dx()
    b.StudyInstanceUID, b.SOPInstanceUID, b.PatientID = a.StudyInstanceUID, generate_uid(), a.PatientID
    a.StudyDate = b.StudyDate = "20261102"
    deid = Deidentifier(SALT)
    deid.apply(a)
    deid.apply(b)
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    assert a.StudyDate == b.StudyDate and a.PatientID == b.PatientID and a.PatientID.startswith("ANON-")
    other = dx()
    other.StudyInstanceUID = "1.2.3.4"
    c = dx()
    c.StudyInstanceUID = "1.2.3.4"
    Deidentifier(b"another-salt-0123456789").apply(other)
    deid.apply(c)
    assert other.StudyInstanceUID != c.StudyInstanceUID


def test_markers_and_method_codes():
    ds = Deidentifier(SALT).apply(dx())
    assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert ds.preamble == b"\x00" * 128


def test_burned_in_annotation_is_not_exported():
    ds = dx()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="Burned In Annotation"):
        Deidentifier(SALT).apply(ds)


@needs_dciodvfy
@pytest.mark.parametrize("kind", MAKERS)
def test_dciodvfy_finds_no_new_error(tmp_path, kind):
    for name in ("clean", "planted"):
        ds = MAKERS[kind]()
        if name == "planted":
            plant(ds)
        source = tmp_path / f"{name}-in.dcm"
        ds.save_as(source, enforce_file_format=True)
        before = _dciodvfy_errors(source)
        path, _out = export(dcmread(source), tmp_path, f"{name}-out")
        new = _dciodvfy_errors(path) - before
        assert not new, f"{kind} ({name}): dciodvfy errors after export:\n" + "\n".join(sorted(new))
