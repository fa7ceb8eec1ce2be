"""Generated DX/CR instances (what `medgate demo` sends): complete, readable back, and valid for dicom3tools ``dciodvfy``."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from training.synthetic.dicom import BITS_STORED, CR_STORAGE, DX_FOR_PRESENTATION_STORAGE, make_dx_dataset

needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None,
    reason="dicom3tools dciodvfy not installed (make test installs it when root)",
)


def gradient(rows: int = 64, columns: int = 48) -> np.ndarray:
    """A diagonal ramp over the full 12-bit range."""
    ramp = np.add.outer(np.arange(rows), np.arange(columns)) / (rows + columns - 2)
    return np.round(ramp * ((1 << BITS_STORED) - 1)).astype(np.uint16)


def dciodvfy(path) -> list[str]:
    """The lines dciodvfy prints about ``path`` (it reports on stderr, the IOD name on stdout)."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return (run.stdout + run.stderr).splitlines()


@pytest.mark.parametrize(
    ("sop_class", "uid"), [("DX", DX_FOR_PRESENTATION_STORAGE), ("CR", CR_STORAGE)]
)
def test_round_trips_through_dcmwrite_and_dcmread(tmp_path, sop_class, uid):
    pixels = gradient()
    ds = make_dx_dataset(pixels, sop_class=sop_class)
    path = tmp_path / "image.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)

    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.SOPClassUID == uid
    assert back.Modality == sop_class
    assert back.PhotometricInterpretation == "MONOCHROME2"
    assert (back.BitsAllocated, back.BitsStored, back.HighBit) == (16, 12, 11)
    assert (back.Rows, back.Columns) == pixels.shape
    assert [float(v) for v in back.PixelSpacing] == [float(v) for v in back.ImagerPixelSpacing]
    assert back.PatientID == "079123456789"
    assert str(back.PatientName) == "Demo^Patient"
    assert back.BodyPartExamined == "CHEST" and back.ViewPosition == "PA"
    np.testing.assert_array_equal(back.pixel_array, pixels)


def test_identifiers_are_passed_through():
    study_uid = generate_uid()
    ds = make_dx_dataset(
        gradient(), patient_id="P1", patient_name="Doe^Jane", issuer="DEMO-HOSPITAL",
        study_uid=study_uid, accession="ACC42",
    )
    assert (ds.PatientID, str(ds.PatientName)) == ("P1", "Doe^Jane")
    assert ds.IssuerOfPatientID == "DEMO-HOSPITAL"
    assert (ds.StudyInstanceUID, ds.AccessionNumber) == (study_uid, "ACC42")
    other = make_dx_dataset(gradient(), study_uid=study_uid)
    assert other.StudyInstanceUID == study_uid
    assert other.SOPInstanceUID != ds.SOPInstanceUID
    assert other.SeriesInstanceUID != ds.SeriesInstanceUID


def test_defaults_leave_optional_identifiers_out_or_empty():
    ds = make_dx_dataset(gradient())
    assert "IssuerOfPatientID" not in ds
    assert ds.AccessionNumber == ""
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Chest"


@needs_dciodvfy
@pytest.mark.parametrize("sop_class", ["DX", "CR"])
@pytest.mark.parametrize("view", ["PA", "AP"])
def test_dciodvfy_reports_no_errors(tmp_path, sop_class, view):
    path = tmp_path / f"{sop_class}.dcm"
    pydicom.dcmwrite(
        path, make_dx_dataset(gradient(), sop_class=sop_class, view=view, issuer="DEMO"),
        enforce_file_format=True,
    )
    lines = dciodvfy(path)
    for line in lines:
        if line.startswith("Warning"):
            print(line)
    assert not [line for line in lines if "Error" in line], "\n".join(lines)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"pixels": np.zeros((8, 8), np.float32)}, "pixels"),
        ({"pixels": np.zeros((2, 8, 8), np.uint16)}, "pixels"),
        ({"pixels": np.full((8, 8), 4096, np.uint16)}, "pixels"),
        ({"sop_class": "MR"}, "sop_class"),
        ({"body_part": "ELBOW"}, "body_part"),
        ({"view": "OBLIQUE"}, "view"),
        ({"patient_id": ""}, "patient_id"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    args = {"pixels": gradient(), **kwargs}
    with pytest.raises(ValueError, match=name):
        make_dx_dataset(**args)


def test_non_array_pixels_raise_type_error():
    with pytest.raises(TypeError, match="pixels"):
        make_dx_dataset([[0, 1], [2, 3]])
