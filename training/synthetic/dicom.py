"""Synthetic radiographs as standard-conformant DICOM instances, for demos and tests.

:func:`make_dx_dataset` wraps a pixel array (e.g. :func:`training.synthetic.cxr.generate_cxr`'s) in a
complete Digital X-Ray Image Storage - For Presentation (PS3.3 A.26) or Computed Radiography Image
Storage (PS3.3 A.2) instance, with file meta information, so that it can be written with
:func:`pydicom.dcmwrite`, sent with C-STORE and checked with ``dciodvfy``.  Every Type 1 and Type 2
attribute of the mandatory modules is present.  ``medgate demo`` sends one; the tests' CT series and
skin photographs (``tests/dicom_testdata.py``) are built on the same helpers.
The patient is a made-up demo patient: nothing here is clinical data.
"""
from __future__ import annotations

import datetime

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

#: PS3.6 Annex A: Digital X-Ray Image Storage - For Presentation.
DX_FOR_PRESENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
#: PS3.6 Annex A: Computed Radiography Image Storage.
CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
_SOP_CLASSES = {"DX": DX_FOR_PRESENTATION_STORAGE, "CR": CR_STORAGE}

#: Bits Stored of every generated image (PS3.3 C.8.11.3 DX Image: 6 to 16 are allowed).
BITS_STORED = 12

#: Detector element pitch in mm (Imager Pixel Spacing, PS3.3 C.8.11.4; also used as Pixel Spacing,
#: i.e. the image is calibrated at the detector plane).
PIXEL_SPACING_MM = 0.2

#: Body Part Examined (PS3.16 Annex L) to Anatomic Region Sequence code (PS3.16 CID 4009
#: "DX Anatomy Imaged").  Unpaired parts only, so Image Laterality is always "U" (unpaired).
BODY_PARTS: dict[str, Code] = {
    "CHEST": codes.SCT.Chest,
    "ABDOMEN": codes.SCT.Abdomen,
    "PELVIS": codes.SCT.Pelvis,
    "SKULL": codes.SCT.Skull,
}

#: View Position (PS3.3 C.8.11.5) to View Code Sequence code (PS3.16 CID 4010 "DX View").
VIEWS: dict[str, Code] = {
    "PA": codes.SCT.PosteroAnterior,
    "AP": codes.SCT.AnteroPosterior,
    "LL": codes.SCT.LeftLateral,
    "RL": codes.SCT.RightLateral,
}

#: Patient Orientation (PS3.3 C.7.6.1.1.1): direction of the rows, then of the columns, of an
#: upright image in the usual display (frontal views as if facing the patient, laterals as if
#: looking at the side against the detector).
_PATIENT_ORIENTATION = {"PA": ["L", "F"], "AP": ["L", "F"], "LL": ["P", "F"], "RL": ["A", "F"]}


def code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def check_pixels(pixels: np.ndarray) -> np.ndarray:
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"pixels must be a numpy.ndarray, {type(pixels).__name__} is given.")
    if pixels.dtype != np.uint16:
        raise ValueError(f"pixels must have dtype uint16, {pixels.dtype} is given.")
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ValueError(f"pixels must be a non-empty 2D array, shape {pixels.shape} is given.")
    if pixels.max() >= 1 << BITS_STORED:
        raise ValueError(
            f"pixels must fit in {BITS_STORED} bits (<= {(1 << BITS_STORED) - 1}), "
            f"maximum {int(pixels.max())} is given."
        )
    return np.ascontiguousarray(pixels)


def make_dx_dataset(
    pixels: np.ndarray,
    *,
    patient_id: str = "079123456789",
    patient_name: str = "Demo^Patient",
    issuer: str | None = None,
    study_uid: str | None = None,
    accession: str | None = None,
    sop_class: str = "DX",
    body_part: str = "CHEST",
    view: str = "PA",
) -> Dataset:
    """Wrap ``pixels`` in a complete DX (For Presentation) or CR image instance.

    Parameters
    ----------
    pixels: numpy.ndarray
        2D ``uint16`` array, rows by columns, values below ``2**BITS_STORED`` (MONOCHROME2: high
        value = bright = dense).
    patient_id: str, optional
        Patient ID (0010,0020).
    patient_name: str, optional
        Patient's Name (0010,0010), in DICOM PN form (``Family^Given``).
    issuer: str | None, optional
        Issuer of Patient ID (0010,0021); left out when None.
    study_uid: str | None, optional
        Study Instance UID; a new UID when None (pass one to put several images in one study).
    accession: str | None, optional
        Accession Number (0008,0050); empty (Type 2) when None.
    sop_class: str, optional
        ``"DX"`` for Digital X-Ray Image Storage - For Presentation, ``"CR"`` for Computed
        Radiography Image Storage.
    body_part: str, optional
        Body Part Examined (0018,0015), one of :data:`BODY_PARTS`.
    view: str, optional
        View Position (0018,5101), one of :data:`VIEWS`.

    Returns
    -------
    pydicom.Dataset
        The instance, with file meta information (Explicit VR Little Endian).

    Raises
    ------
    TypeError
        When ``pixels`` is not a numpy array.
    ValueError
        When an argument is out of range; the message names it.
    """
    pixels = check_pixels(pixels)
    modality = str(sop_class).upper()
    if modality not in _SOP_CLASSES:
        raise ValueError(
            f"sop_class must be one of {sorted(_SOP_CLASSES)}, {sop_class!r} is given."
        )
    body_part = str(body_part).upper()
    if body_part not in BODY_PARTS:
        raise ValueError(f"body_part must be one of {sorted(BODY_PARTS)}, {body_part!r} is given.")
    view = str(view).upper()
    if view not in VIEWS:
        raise ValueError(f"view must be one of {sorted(VIEWS)}, {view!r} is given.")
    if not patient_id or len(patient_id) > 64:
        raise ValueError(f"patient_id must have 1 to 64 characters, {patient_id!r} is given.")

    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_class_uid = _SOP_CLASSES[modality]
    sop_instance_uid = generate_uid()

    ds = Dataset()
    # SOP Common (PS3.3 C.12.1)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient (C.7.1.1)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = study_uid if study_uid is not None else generate_uid()
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = accession if accession is not None else ""
    ds.StudyDescription = f"XR {body_part.title()} {view}"
    # General Series (C.7.3.1), DX Series (C.8.11.1) / CR Series (C.8.1.1)
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = f"{body_part.title()} {view}"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    # Laterality (C.7.3.1) is Type 2C for paired body parts only: BODY_PARTS has none.
    # General Equipment (C.7.5.1)
    ds.Manufacturer = "medgate"
    ds.ManufacturerModelName = "medgate test data generator"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "medgate demo"
    # General Acquisition (C.7.10.1), General Image (C.7.6.1)
    ds.AcquisitionDate, ds.AcquisitionTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceNumber = 1
    ds.PatientOrientation = _PATIENT_ORIENTATION[view]
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image Pixel (C.7.6.3)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    # Modality LUT, VOI LUT (C.11.2: required for DX For Presentation), Presentation LUT
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = (1 << BITS_STORED) // 2
    ds.WindowWidth = 1 << BITS_STORED
    ds.PresentationLUTShape = "IDENTITY"
    # Detector / plate geometry (DX Detector C.8.11.4, CR Image C.8.1.2)
    ds.ImagerPixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "detector plane"
    ds.KVP = 120
    ds.ExposureTime = 10
    ds.XRayTubeCurrent = 200
    if modality == "DX":
        _add_dx_modules(ds, body_part, view)
    return with_file_meta(ds)


def _add_dx_modules(ds: Dataset, body_part: str, view: str) -> None:
    """DX Anatomy Imaged (C.8.11.2), DX Image (C.8.11.3), DX Detector (C.8.11.4), DX Positioning
    (C.8.11.5) and Acquisition Context (C.7.6.14, mandatory in the DX IOD only)."""
    ds.AcquisitionContextSequence = []
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = [code_item(BODY_PARTS[body_part])]
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.CalibrationImage = "NO"
    ds.DetectorType = "DIRECT"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "MEDGATE-0001"
    ds.DetectorManufacturerName = "medgate"
    ds.DetectorManufacturerModelName = "generated"
    ds.DetectorConditionsNominalFlag = "YES"
    ds.DetectorElementPhysicalSize = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.DetectorElementSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.DetectorActiveShape = "RECTANGLE"
    height_mm, width_mm = (round(PIXEL_SPACING_MM * n, 3) for n in (ds.Rows, ds.Columns))
    ds.DetectorActiveDimensions = [height_mm, width_mm]
    ds.FieldOfViewShape = "RECTANGLE"
    ds.FieldOfViewDimensions = [max(1, round(height_mm)), max(1, round(width_mm))]
    ds.FieldOfViewOrigin = [0, 0]
    ds.FieldOfViewRotation = "0"
    ds.FieldOfViewHorizontalFlip = "NO"
    ds.PositionerType = "COLUMN"
    ds.ViewCodeSequence = [code_item(VIEWS[view])]


def with_file_meta(ds: Dataset) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    return ds


